//! The Elasticsearch server named by `SWITCHYARD_TEST_ELASTICSEARCH_URL` (`scripts/services
//! up` starts the OpenSearch-API stand-in and prints it; point it at a real cluster to run
//! the same tests there), with blocking helpers to set up and read back what a test
//! checks.
//!
//! A cluster has one `switchyard-migrations` history and one `switchyard-locks`, so the
//! tests that migrate take [`Elastic::exclusive`], which clears them first. Indexes a test
//! makes carry its own prefix.

use std::sync::{Mutex, MutexGuard};

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::Transport;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::Value;

/// The stand-in `scripts/services up` starts, when the variable is not set.
const DEFAULT_ELASTICSEARCH_URL: &str = "http://127.0.0.1:54335";

/// switchyard's own indexes, shared by every test on the cluster.
const OWN_INDEXES: &[&str] = &[
    "switchyard-migrations",
    "switchyard-migration-progress",
    "switchyard-locks",
];

static CLUSTER: Mutex<()> = Mutex::new(());

/// Whether the server's write block (`index.blocks.write`) refuses deletes, as real
/// Elasticsearch and OpenSearch do; the stand-in of `scripts/services` lets them through.
pub fn blocks_deletes() -> bool {
    let probe = Elastic::new();
    let index = probe.index("block_probe");
    probe.ok(
        Method::Put,
        &format!("/{index}/_doc/1?refresh=true"),
        Some(&serde_json::json!({})),
    );
    probe.ok(
        Method::Put,
        &format!("/{index}/_settings"),
        Some(&serde_json::json!({"index": {"blocks": {"write": true}}})),
    );
    let (status, _) = probe.call(Method::Delete, &format!("/{index}/_doc/1"), None);
    probe.ok(
        Method::Put,
        &format!("/{index}/_settings"),
        Some(&serde_json::json!({"index": {"blocks": {"write": false}}})),
    );
    status == 403
}

pub fn server_url() -> String {
    std::env::var("SWITCHYARD_TEST_ELASTICSEARCH_URL")
        .unwrap_or_else(|_| DEFAULT_ELASTICSEARCH_URL.into())
}

pub struct Elastic {
    /// Lower-case, unique to this test: the start of every index it names.
    pub prefix: String,
    pub url: String,
    runtime: tokio::runtime::Runtime,
    client: Elasticsearch,
    _exclusive: Option<MutexGuard<'static, ()>>,
}

impl Elastic {
    pub fn new() -> Elastic {
        let url = server_url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client =
            Elasticsearch::new(Transport::single_node(&url).expect("an Elasticsearch URL"));
        Elastic {
            prefix: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            url,
            runtime,
            client,
            _exclusive: None,
        }
    }

    /// The cluster to this test alone (among the tests of this binary), without
    /// switchyard's history, progress and lock indexes.
    pub fn exclusive() -> Elastic {
        let guard = CLUSTER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut elastic = Elastic::new();
        for index in OWN_INDEXES {
            elastic.call(Method::Delete, &format!("/{index}"), None);
        }
        elastic._exclusive = Some(guard);
        elastic
    }

    /// `[databases.elasticsearch]` of a configuration naming this server.
    pub fn config(&self) -> String {
        format!(
            "[databases.elasticsearch]\nkind = \"elasticsearch\"\nurl = \"{}\"\n",
            self.url
        )
    }

    /// `name` with this test's prefix.
    pub fn index(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }

    /// One request: the status and the JSON body (`Null` when empty).
    pub fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.send(method, path, HeaderMap::new(), body.map(Value::to_string))
    }

    /// A request with an NDJSON body (`_bulk`).
    pub fn call_ndjson(&self, path: &str, body: String) -> (u16, Value) {
        let mut headers = HeaderMap::new();
        headers.insert(
            elasticsearch::http::headers::CONTENT_TYPE,
            elasticsearch::http::headers::HeaderValue::from_static("application/x-ndjson"),
        );
        self.send(Method::Post, path, headers, Some(body))
    }

    /// Sends a request, once more when the first found its kept-alive connection closed
    /// (the server closes idle ones, and this client's runtime only runs during a call,
    /// so it cannot see that happen).
    fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<String>,
    ) -> (u16, Value) {
        self.runtime.block_on(async {
            let send = || {
                self.client.send::<String, ()>(
                    method,
                    path,
                    headers.clone(),
                    None,
                    body.clone(),
                    None,
                )
            };
            let reply = match send().await {
                Ok(reply) => reply,
                Err(_) => send().await.expect("the Elasticsearch server answers"),
            };
            let status = reply.status_code().as_u16();
            let text = reply.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    /// A request that must succeed; its body.
    pub fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, reply) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{path}: HTTP {status}: {reply}"
        );
        reply
    }

    pub fn exists(&self, index: &str) -> bool {
        self.call(Method::Head, &format!("/{index}"), None).0 == 200
    }

    /// The indexes `alias` points at, sorted.
    pub fn alias_targets(&self, alias: &str) -> Vec<String> {
        let (status, body) = self.call(Method::Get, &format!("/_alias/{alias}"), None);
        if status == 404 {
            return Vec::new();
        }
        let mut names: Vec<String> = body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `index`'s mapping (`properties` and the rest).
    pub fn mapping(&self, index: &str) -> Value {
        let body = self.ok(Method::Get, &format!("/{index}/_mapping"), None);
        body[index]["mappings"].clone()
    }

    /// Every document of `index` (or of the index an alias names), by `_id`, read with
    /// a scroll.
    pub fn documents(&self, index: &str) -> std::collections::BTreeMap<String, Value> {
        self.ok(Method::Post, &format!("/{index}/_refresh"), None);
        let mut documents = std::collections::BTreeMap::new();
        let mut page = self.ok(
            Method::Post,
            &format!("/{index}/_search?scroll=1m"),
            Some(&serde_json::json!({"size": 5000})),
        );
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for hit in hits {
                documents.insert(
                    hit["_id"].as_str().unwrap().to_string(),
                    hit["_source"].clone(),
                );
            }
            let scroll = page["_scroll_id"].clone();
            page = self.ok(
                Method::Post,
                "/_search/scroll",
                Some(&serde_json::json!({"scroll": "1m", "scroll_id": scroll})),
            );
        }
        documents
    }

    /// Indexes `documents` (`_id`, `_source`) into `index` in bulk requests.
    pub fn put_documents(&self, index: &str, documents: impl IntoIterator<Item = (String, Value)>) {
        let mut body = String::new();
        let flush = |body: &mut String| {
            if !body.is_empty() {
                let (status, reply) = self.call_ndjson("/_bulk", std::mem::take(body));
                assert!(status == 200 && reply["errors"] == false, "bulk: {reply}");
            }
        };
        for (n, (id, source)) in documents.into_iter().enumerate() {
            body.push_str(&format!(
                "{}\n{source}\n",
                serde_json::json!({"index": {"_index": index, "_id": id}})
            ));
            if n % 5000 == 4999 {
                flush(&mut body);
            }
        }
        flush(&mut body);
        self.ok(Method::Post, &format!("/{index}/_refresh"), None);
    }

    /// The history, one `version status` per row, by version.
    pub fn history(&self) -> Vec<String> {
        let (status, body) = self.call(
            Method::Post,
            "/switchyard-migrations/_search",
            Some(&serde_json::json!({"size": 1000})),
        );
        if status == 404 {
            return Vec::new();
        }
        let mut rows: Vec<String> = body["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| {
                format!(
                    "{} {}",
                    hit["_source"]["version"].as_str().unwrap(),
                    hit["_source"]["status"].as_str().unwrap()
                )
            })
            .collect();
        rows.sort();
        rows
    }
}

impl Drop for Elastic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // leave what a failed test made, to look at (and not panic again)
        }
        let (_, indexes) = self.call(Method::Get, &format!("/{}_*/_alias", self.prefix), None);
        if let Some(indexes) = indexes.as_object() {
            for index in indexes.keys() {
                self.call(Method::Delete, &format!("/{index}"), None);
            }
        }
    }
}

/// The names of a job's checkpoints in the project's state store (the default SQLite
/// file), where an Elasticsearch target's live.
pub fn checkpoints(project: &super::Project, job: &str) -> Vec<String> {
    let state = rusqlite::Connection::open(project.path("data/switchyard.db")).unwrap();
    let mut statement = state
        .prepare("SELECT name FROM checkpoints WHERE job = ?1 ORDER BY name")
        .unwrap();
    statement
        .query_map([job], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
