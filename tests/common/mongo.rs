//! A private database per test on the MongoDB server named by
//! `SWITCHYARD_TEST_MONGODB_URL` (`scripts/services up` starts the stand-in and prints
//! it; point it at a real replica set to run the same tests there), with blocking
//! helpers to set up and read back what a test checks.

use std::future::IntoFuture;

use mongodb::bson::{doc, Document};
use mongodb::Client;

/// The stand-in `scripts/services up` starts, when the variable is not set.
const DEFAULT_MONGODB_URL: &str = "mongodb://127.0.0.1:54334/?directConnection=true";

pub fn server_url() -> String {
    std::env::var("SWITCHYARD_TEST_MONGODB_URL").unwrap_or_else(|_| DEFAULT_MONGODB_URL.into())
}

/// `url` naming `database` as its path (hosts and options kept; several hosts allowed).
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a mongodb:// URL");
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let options = tail.split_once('?').map(|(_, o)| o).unwrap_or("");
    if options.is_empty() {
        format!("{scheme}://{hosts}/{database}")
    } else {
        format!("{scheme}://{hosts}/{database}?{options}")
    }
}

pub struct MongoDb {
    pub name: String,
    pub url: String,
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl MongoDb {
    pub fn new() -> MongoDb {
        let name = format!("sy_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(&server_url(), &name);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut options = runtime
            .block_on(mongodb::options::ClientOptions::parse(&url).into_future())
            .expect("SWITCHYARD_TEST_MONGODB_URL is a MongoDB URL");
        // Reading back a whole large collection takes the stand-in many seconds, during
        // which its answers to the driver's heartbeats are slow too.
        options.connect_timeout = Some(std::time::Duration::from_secs(120));
        options.server_selection_timeout = Some(std::time::Duration::from_secs(120));
        // (the driver spawns its tasks on the runtime it is created in)
        let client = runtime
            .block_on(async { Client::with_options(options) })
            .expect("a MongoDB client");
        MongoDb {
            name,
            url,
            runtime,
            client,
        }
    }

    /// `[databases.mongodb]` of a configuration naming this database.
    pub fn config(&self) -> String {
        format!(
            "[databases.mongodb]\nkind = \"mongodb\"\nurl = \"{}\"\n",
            self.url
        )
    }

    pub fn block<T>(&self, future: impl IntoFuture<Output = T>) -> T {
        self.runtime.block_on(future.into_future())
    }

    pub fn database(&self) -> mongodb::Database {
        self.client.database(&self.name)
    }

    pub fn collection(&self, name: &str) -> mongodb::Collection<Document> {
        self.database().collection(name)
    }

    pub fn insert(&self, collection: &str, documents: Vec<Document>) {
        for chunk in documents.chunks(5000) {
            self.block(self.collection(collection).insert_many(chunk.to_vec()))
                .expect("insert");
        }
    }

    pub fn count(&self, collection: &str, filter: Document) -> u64 {
        self.block(self.collection(collection).count_documents(filter))
            .expect("count")
    }

    /// Every document of `collection` in `_id` order.
    pub fn documents(&self, collection: &str) -> Vec<Document> {
        use futures::TryStreamExt;
        self.block(async {
            self.collection(collection)
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .await?
                .try_collect()
                .await
        })
        .expect("find")
    }

    /// The collections a user sees: all but switchyard's own (`switchyard_*`).
    pub fn collections(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .block(self.database().list_collection_names())
            .expect("listCollections")
            .into_iter()
            .filter(|name| !name.starts_with("switchyard_"))
            .collect();
        names.sort();
        names
    }

    /// The keys of each index of `collection` (`{"email": 1}` as `email_1`), sorted:
    /// compared by key, since some servers rename indexes.
    pub fn index_keys(&self, collection: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let indexes: Vec<mongodb::IndexModel> = self
            .block(async {
                self.collection(collection)
                    .list_indexes()
                    .await?
                    .try_collect()
                    .await
            })
            .unwrap_or_default();
        let mut keys: Vec<String> = indexes
            .iter()
            .map(|index| {
                index
                    .keys
                    .iter()
                    .map(|(field, direction)| format!("{field}_{direction}").replace('"', ""))
                    .collect::<Vec<_>>()
                    .join("_")
            })
            .collect();
        keys.sort();
        keys
    }

    /// `version STATUS` of each history document, in version order.
    pub fn history(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .documents("switchyard_migrations")
            .iter()
            .map(|d| {
                format!(
                    "{} {}",
                    d.get_str("version").unwrap(),
                    d.get_str("status").unwrap()
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// Whether the server is a replica set member (change streams and transactions need
    /// one); `Err(why not)` names what the server is, for a skip message.
    pub fn replica_set(&self) -> Result<(), String> {
        let hello = self
            .block(self.client.database("admin").run_command(doc! {"hello": 1}))
            .expect("hello");
        if hello.contains_key("setName") {
            Ok(())
        } else {
            let version = self
                .block(
                    self.client
                        .database("admin")
                        .run_command(doc! {"buildInfo": 1}),
                )
                .ok()
                .and_then(|info| info.get_str("version").ok().map(str::to_string))
                .unwrap_or_default();
            Err(format!(
                "the MongoDB server at SWITCHYARD_TEST_MONGODB_URL is standalone (version {version}), and change streams need a replica set"
            ))
        }
    }
}

impl Drop for MongoDb {
    fn drop(&mut self) {
        let _ = self.block(self.database().drop());
    }
}

/// Writes of every kind to `collection` of the database at `url`, from a thread of its
/// own: for each `i` below `count`, an update (a field set, an embedded field set, an
/// element pushed) of `_id` `i * 7`, a delete of `i * 11 + 3`, an insert of
/// `100_000 * round + i` and, every tenth, an array popped and a document replaced. The
/// documents are `orders` of the tests (ids from 0); each round inserts other ids.
pub fn spawn_writer(
    url: &str,
    collection: &str,
    round: i64,
    count: i64,
) -> std::thread::JoinHandle<()> {
    let (url, collection) = (url.to_string(), collection.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = Client::with_uri_str(&url).await.unwrap();
            let orders = client
                .default_database()
                .expect("a URL naming its database")
                .collection::<Document>(&collection);
            for i in 0..count {
                orders
                    .update_one(
                        doc! {"_id": i * 7},
                        doc! {"$set": {"cents": -i, "note.by": "writer"}, "$push": {"items": i}},
                    )
                    .await
                    .unwrap();
                orders.delete_one(doc! {"_id": i * 11 + 3}).await.unwrap();
                orders
                    .insert_one(doc! {"_id": 100_000 * round + i, "customer": "late", "cents": i, "items": []})
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    orders
                        .update_one(doc! {"_id": i * 7 + 1}, doc! {"$pop": {"items": 1}})
                        .await
                        .unwrap();
                    orders
                        .replace_one(doc! {"_id": i * 13 + 5}, doc! {"customer": "replaced", "cents": 1_i64, "items": [1]})
                        .await
                        .unwrap();
                }
            }
        });
    })
}
