//! Versioned Elasticsearch migrations through the real binary, on the server named by
//! `SWITCHYARD_TEST_ELASTICSEARCH_URL`: a real-world mapping (custom analyzer, nested and
//! object fields) created behind an alias, reindexed, rolled back and applied again;
//! irreversible operations refused; checksums; undo of a migration that fails midway;
//! dry-run and status.

mod common;

use common::elastic::Elastic;
use common::Project;
use elasticsearch::http::Method;
use serde_json::json;

/// A project with `[databases.elasticsearch]`, the cluster to itself.
fn project() -> (Project, Elastic) {
    let elastic = Elastic::exclusive();
    let project = Project::with_config(&elastic.config());
    std::fs::create_dir_all(project.path("migrations/elasticsearch")).unwrap();
    (project, elastic)
}

fn write(project: &Project, elastic: &Elastic, name: &str, text: &str) {
    let text = text.replace("PREFIX", &elastic.prefix);
    std::fs::write(project.path("migrations/elasticsearch").join(name), text).unwrap();
}

/// 1.0.0: `products_v1` with a folding analyzer, nested variants and an object seller,
/// behind the alias `products`.
const PRODUCTS: &str = r#"{"version": "1.0.0", "name": "products", "database_type": "elasticsearch", "migration_type": "schema",
  "operations": [
    {"type": "create_index", "index": "PREFIX_products_v1",
     "settings": {"number_of_shards": 1, "number_of_replicas": 0,
                  "analysis": {"analyzer": {"folded": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase", "asciifolding"]}}}},
     "mapping": {"dynamic": "strict", "properties": {
        "name": {"type": "text", "analyzer": "folded", "fields": {"raw": {"type": "keyword"}}},
        "sku": {"type": "keyword"},
        "variants": {"type": "nested", "properties": {"color": {"type": "keyword"}, "stock": {"type": "integer"}}},
        "seller": {"properties": {"id": {"type": "long"}, "name": {"type": "text"}}}}}},
    {"type": "create_alias", "index": "PREFIX_products_v1", "alias": "PREFIX_products"}
  ]}"#;

fn seed_products(elastic: &Elastic, count: usize) {
    let mut bulk = String::new();
    for i in 0..count {
        bulk.push_str(&format!("{{\"index\": {{\"_id\": \"{i}\"}}}}\n"));
        bulk.push_str(
            &json!({"name": format!("Crème {i}"), "sku": format!("S{i}"),
            "variants": [{"color": "red", "stock": i}], "seller": {"id": i % 7, "name": "acme"}})
            .to_string(),
        );
        bulk.push('\n');
    }
    let (status, reply) = elastic.call_ndjson(
        &format!("/{}/_bulk?refresh=true", elastic.index("products")),
        bulk,
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["errors"], false, "{reply}");
}

/// `text` with each run of spaces as one (status columns are as wide as their values).
fn words(text: &str) -> String {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(elastic: &Elastic, index: &str) -> u64 {
    elastic.ok(Method::Get, &format!("/{index}/_count"), None)["count"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_mapping_behind_an_alias_is_reindexed_rolled_back_and_applied_again() {
    let (project, elastic) = project();
    write(&project, &elastic, "001_products.json", PRODUCTS);
    project.run(&["migrate", "--version", "1.0.0"]).ok();
    let v1 = elastic.index("products_v1");
    assert_eq!(
        elastic.alias_targets(&elastic.index("products")),
        std::slice::from_ref(&v1)
    );
    assert_eq!(
        elastic.mapping(&v1)["properties"]["variants"]["type"],
        "nested"
    );
    seed_products(&elastic, 300);
    write(
        &project,
        &elastic,
        "002_price.json",
        r#"{"version": "1.1.0", "name": "price", "operations": [
            {"type": "create_index", "index": "PREFIX_products_v2",
             "mapping": {"properties": {"name": {"type": "text"}, "sku": {"type": "keyword"},
                "variants": {"type": "nested", "properties": {"color": {"type": "keyword"}, "stock": {"type": "integer"}}},
                "seller": {"properties": {"id": {"type": "long"}, "name": {"type": "text"}}},
                "price": {"type": "scaled_float", "scaling_factor": 100}}}},
            {"type": "reindex", "source": "PREFIX_products_v1", "dest": "PREFIX_products_v2"},
            {"type": "update_mapping", "index": "PREFIX_products_v1", "mapping": {"properties": {"price": {"type": "scaled_float", "scaling_factor": 100}}}}
          ]}"#,
    );
    write(
        &project,
        &elastic,
        "002_price_rollback.json",
        r#"{"version": "1.1.0", "name": "price", "operations": [
            {"type": "delete_index", "index": "PREFIX_products_v2"}
          ]}"#,
    );
    let applied = project.run(&["migrate"]).ok();
    assert!(
        applied.stdout.contains("elasticsearch: 1 applied"),
        "{}",
        applied.stdout
    );
    assert_eq!(elastic.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);
    let v2 = elastic.index("products_v2");
    assert_eq!(
        count(&elastic, &v2),
        300,
        "the reindex copied every document"
    );
    assert_eq!(
        elastic.mapping(&v1)["properties"]["price"]["type"],
        "scaled_float"
    );
    let status = project.run(&["status"]).ok();
    assert!(
        words(&status.stdout).contains("COMPLETED elasticsearch 1.1.0 price"),
        "{}",
        status.stdout
    );

    let back = project.run(&["rollback", "0.0.0"]).ok();
    assert!(back.stdout.contains("2 rolled back"), "{}", back.stdout);
    assert_eq!(
        elastic.history(),
        ["1.0.0 ROLLED_BACK", "1.1.0 ROLLED_BACK"]
    );
    assert!(!elastic.exists(&v1) && !elastic.exists(&v2));
    assert!(elastic.alias_targets(&elastic.index("products")).is_empty());

    project.run(&["migrate"]).ok();
    assert_eq!(elastic.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);
    assert_eq!(elastic.alias_targets(&elastic.index("products")), [v1]);
    assert!(elastic.exists(&v2));
}

#[test]
fn an_irreversible_operation_refuses_rollback_and_a_changed_file_is_refused() {
    let (project, elastic) = project();
    write(&project, &elastic, "001_products.json", PRODUCTS);
    write(
        &project,
        &elastic,
        "002_price.json",
        r#"{"version": "1.1.0", "name": "price", "operations": [
            {"type": "update_mapping", "index": "PREFIX_products_v1", "mapping": {"properties": {"price": {"type": "float"}}}}
          ]}"#,
    );
    project.run(&["migrate"]).ok();
    let refused = project.run(&["rollback", "1.0.0"]).expect_code(2);
    assert!(
        refused.stderr.contains(&format!(
            "migration 1.1.0 has no rollback (operation 1 (update_mapping `{}`) has no inverse; add 002_price_rollback.json beside it)",
            elastic.index("products_v1")
        )),
        "{}",
        refused.stderr
    );
    assert_eq!(elastic.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);

    write(
        &project,
        &elastic,
        "001_products.json",
        &PRODUCTS.replace(
            "\"sku\": {\"type\": \"keyword\"}",
            "\"sku\": {\"type\": \"text\"}",
        ),
    );
    let changed = project.run(&["migrate"]).expect_code(2);
    assert!(
        changed.stderr.contains("001_products.json") && changed.stderr.contains("checksum"),
        "{}",
        changed.stderr
    );
}

#[test]
fn a_migration_that_fails_midway_undoes_what_it_did() {
    let (project, elastic) = project();
    write(&project, &elastic, "001_products.json", PRODUCTS);
    project.run(&["migrate"]).ok();
    seed_products(&elastic, 20);
    // The third operation changes a field's type, which the server refuses.
    write(
        &project,
        &elastic,
        "002_search.json",
        r#"{"version": "1.1.0", "name": "search", "operations": [
            {"type": "create_index", "index": "PREFIX_search_v1", "mapping": {"properties": {"q": {"type": "keyword"}}}},
            {"type": "create_alias", "index": "PREFIX_search_v1", "alias": "PREFIX_search"},
            {"type": "update_mapping", "index": "PREFIX_products_v1", "mapping": {"properties": {"sku": {"type": "long"}}}}
          ]}"#,
    );
    let failed = project.run(&["migrate"]).expect_code(1);
    assert!(
        failed.stderr.contains(&format!(
            "migration 1.1.0 (search) failed on `elasticsearch`: operation 3 (update_mapping `{}`): ",
            elastic.index("products_v1")
        )),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("(undone: operation 2, 1)"),
        "{}",
        failed.stderr
    );
    assert_eq!(elastic.history(), ["1.0.0 COMPLETED", "1.1.0 FAILED"]);
    assert!(!elastic.exists(&elastic.index("search_v1")));
    assert!(elastic.alias_targets(&elastic.index("search")).is_empty());
    assert_eq!(count(&elastic, &elastic.index("products_v1")), 20);
    assert_eq!(
        elastic.mapping(&elastic.index("products_v1"))["properties"]["sku"]["type"],
        "keyword"
    );
}

#[test]
fn dry_run_and_status_change_nothing() {
    let (project, elastic) = project();
    write(&project, &elastic, "001_products.json", PRODUCTS);
    let dry = project.run(&["migrate", "--dry-run"]).ok();
    assert!(
        dry.stdout.contains("would apply 1.0.0 products"),
        "{}",
        dry.stdout
    );
    let status = project.run(&["status"]).ok();
    assert!(
        words(&status.stdout).contains("PENDING elasticsearch 1.0.0 products - -"),
        "{}",
        status.stdout
    );
    assert!(elastic.history().is_empty());
    assert!(!elastic.exists(&elastic.index("products_v1")));
}

#[test]
fn an_expired_lease_is_taken_over_and_a_live_one_waited_for() {
    let (project, elastic) = project();
    write(&project, &elastic, "001_products.json", PRODUCTS);
    let lease = |expires_at: chrono::DateTime<chrono::Utc>| {
        elastic.ok(
            Method::Put,
            "/switchyard-locks/_doc/migrations?refresh=true",
            Some(
                &json!({"owner": "crashed", "holder": "ci@build-7 pid 12", "host": "build-7",
                         "pid": 12, "taken_at": chrono::Utc::now().to_rfc3339(),
                         "expires_at": expires_at.to_rfc3339()}),
            ),
        );
    };
    lease(chrono::Utc::now() + chrono::Duration::minutes(10));
    std::fs::write(
        project.path("config/switchyard.toml"),
        std::fs::read_to_string(project.path("config/switchyard.toml")).unwrap()
            + "[migrations]\nlock_wait = \"1s\"\n",
    )
    .unwrap();
    let waited = project.run(&["migrate"]).expect_code(1);
    assert!(
        waited.stderr.starts_with("error: database `elasticsearch`: another run holds the migration lock (held by ci@build-7 pid 12, whose lease runs until "),
        "{}",
        waited.stderr
    );
    assert!(elastic.history().is_empty());

    // The holder crashed: once its lease has expired, the next run takes it.
    lease(chrono::Utc::now() - chrono::Duration::seconds(1));
    project.run(&["migrate"]).ok();
    assert_eq!(elastic.history(), ["1.0.0 COMPLETED"]);
    let (status, _) = elastic.call(Method::Get, "/switchyard-locks/_doc/migrations", None);
    assert_eq!(status, 404, "released");
}

#[test]
fn an_unreachable_server_is_named_without_its_password() {
    let project = Project::with_config(
        "[databases.elasticsearch]\nkind = \"elasticsearch\"\nurl = \"http://admin:s3cr3t-pw@127.0.0.1:9/\"\n",
    );
    std::fs::create_dir_all(project.path("migrations/elasticsearch")).unwrap();
    std::fs::write(
        project.path("migrations/elasticsearch/001_a.json"),
        r#"{"version": "1", "operations": [{"type": "create_index", "index": "a"}]}"#,
    )
    .unwrap();
    let failed = project.run(&["migrate", "--databases", "elasticsearch"]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains("database `elasticsearch`")
            && failed.stderr.contains("cannot reach"),
        "{}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("s3cr3t-pw") && !failed.stdout.contains("s3cr3t-pw"),
        "{}",
        failed.stderr
    );
}
