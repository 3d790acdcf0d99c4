//! Copy jobs onto another PostgreSQL server (`SWITCHYARD_TEST_OTHER_POSTGRES_URL`, started
//! by `scripts/services up`): rows streamed as `COPY` data, catch-up from the source's slot
//! applied on the other server, verification by digests on each server, cutover by
//! fencing the source, and the way back after it.

mod common;

use common::proxy::Proxy;
use common::writer::{contents, create_items, seed, JobPath, Writer};
use common::{Project, TestDb};

/// A project with `postgresql` on the main server and `other` on the second one.
fn two_servers() -> (Project, TestDb) {
    let (project, other) = Project::for_path(JobPath::OtherServer);
    (project, other.expect("the other server's database"))
}

/// A job copying `items` onto `other` under the same name; `rest` is appended.
fn items_across(rest: &str) -> String {
    format!(
        "name = \"items\"\nkind = \"copy\"\n\n[source]\ndatabase = \"postgresql\"\ntable = \"public.items\"\n\n\
         [target]\ndatabase = \"other\"\ntable = \"public.items\"\n\n\
         [expand]\nsql = [\"CREATE TABLE IF NOT EXISTS public.items (id bigint PRIMARY KEY, v text NOT NULL, pad text)\"]\n\n\
         [copy]\nbatch_size = 500\nconcurrency = 2\n\n[contract]\nafter = \"manual\"\n{rest}\n"
    )
}

fn slots(db: &TestDb) -> Vec<String> {
    db.column("SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()")
}

fn publications(db: &TestDb) -> Vec<String> {
    db.column("SELECT count(*)::text FROM pg_publication")
}

#[test]
fn a_copy_onto_another_server_under_writes_cuts_over_and_swaps_back_with_nothing_lost() {
    let (project, other) = two_servers();
    let mut source = project.db.client();
    let model = create_items(&mut source, "items", 20_000);
    // `[cutover] command` (a pooler reload, say) runs once the target took over.
    let ran = project.path("cutover-command-ran");
    let file = project.job_file(
        "items",
        &items_across(&format!(
            "[cutover]\ncommand = 'printf \"%s %s\" \"$SWITCHYARD_JOB\" \"$SWITCHYARD_TARGET_URL\" > {}'",
            ran.display()
        )),
    );
    let writer = Writer::start(&project.db.url, "items", model, seed());

    let run = project.run(&["job", "run", &file]).ok();
    assert!(!ran.exists(), "no command before cutover");
    assert_eq!(
        run.stdout,
        "job items: verified and caught up, ready to cut over: switchyard job cutover items\n"
    );
    // Writes after the run returned reach the target at cutover. The source is renamed
    // at cutover, so its writer stops first.
    project.db.wait_for(
        "SELECT (count(*) >= 100)::text FROM items WHERE id > 1000000",
        "true",
    );
    let (model, ops) = writer.stop();
    assert!(ops > 100, "the writer made only {ops} changes");
    let cutover = project.run(&["job", "cutover", "items"]).ok();
    assert!(
        cutover
            .stdout
            .starts_with("job items: waiting for contract: switchyard job contract items\njob items: writes to the source were blocked for "),
        "{}",
        cutover.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        format!("items {}", other.url)
    );
    let mut target = other.client();
    assert_eq!(
        contents(&mut target, "items"),
        model,
        "the target holds exactly what was written to the source"
    );
    assert!(project.db.exists("items_old") && !project.db.exists("items"));
    let fenced = source.execute("INSERT INTO items (id, v) VALUES (-1, 'late')", &[]);
    assert!(fenced.is_err(), "writes to the fenced source fail");
    assert_eq!(slots(&project.db), ["0"], "the source's slot is gone");
    assert_eq!(slots(&other), ["1"], "the way back captures the new table");

    // Writes made to the new table go back to the old one on abort.
    let writer = Writer::start(&other.url, "items", model, seed());
    other.wait_for(
        "SELECT (count(*) >= 100)::text FROM items WHERE id > (SELECT max(id) FROM items) - 900000",
        "true",
    );
    let (model, _) = writer.stop();
    let abort = project.run(&["job", "abort", "items"]).ok();
    assert_eq!(abort.stdout, "job items: aborted\n");
    assert_eq!(
        contents(&mut source, "items"),
        model,
        "the old table has its name back with every write made to the new one"
    );
    assert!(!project.db.exists("items_old"));
    assert!(
        other.exists("items_old") && !other.exists("items"),
        "the new table is set aside, so writes to it fail"
    );
    assert_eq!(slots(&project.db), ["0"]);
    assert_eq!(slots(&other), ["0"], "the way back's slot is gone");
    assert_eq!(publications(&project.db), ["0"]);
    assert_eq!(publications(&other), ["0"]);
    assert_eq!(
        other.column("SELECT count(*)::text FROM switchyard.copy_progress"),
        ["0"]
    );
}

/// Columns of every kind a real schema has; `extra` adds the server-local ones.
const KINDS_COLUMNS: &str = "id bigint PRIMARY KEY, n numeric, big numeric(30,10), f8 float8, f4 real, \
    ts timestamptz, tsl timestamp, d date, t time, iv interval, j jsonb, js json, ints int[], texts text[], \
    b bytea, long text, flag boolean, u uuid, ip inet, vc varchar(20), ch char(4)";

/// Rows `from..to` of `kinds`, with NULLs, special values and TOASTed text among them.
fn kinds_rows(from: i64, to: i64) -> String {
    format!(
        "SELECT g, CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 0 THEN 'NaN' ELSE g * 1.000000000000000000001 END,
                g / 3.0, CASE WHEN g % 13 = 0 THEN 'Infinity'::float8 WHEN g % 17 = 0 THEN '-0'::float8 ELSE g / 7.0 END,
                (g / 9.0)::real, timestamptz '2026-01-01 00:00:00.123456+02' + g * interval '1 hour 1 microsecond',
                timestamp '1999-12-31 23:59:59.999999' + g * interval '1 day', CASE WHEN g % 19 = 0 THEN 'infinity'::date ELSE date '2000-02-29' + g END,
                time '12:34:56.789' + g * interval '1 second', interval '1 year 2 mons 3 days 04:05:06.7' * g,
                jsonb_build_object('k', g, 'nested', jsonb_build_array(g, 'x', NULL, 1.50), 'é', 'ü'),
                json_build_object('b', g, 'a', '  spaced  ')::json,
                ARRAY[g, NULL, -g]::int[], ARRAY['a,b', NULL, 'q\"uote', '']::text[],
                decode(md5(g::text), 'hex') || '\\x00ff'::bytea,
                CASE WHEN g % 5 = 0 THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 200) i) END,
                g % 2 = 0, md5(g::text)::uuid, ('10.0.' || (g % 256) || '.1/24')::inet, 'v' || g, 'c'
         FROM generate_series({from}, {to}) g"
    )
}

/// Every row of `table` in text form, in key order, as one digest.
fn digest(db: &TestDb, table: &str) -> String {
    db.column(&format!(
        "SELECT count(*) || ' ' || md5(COALESCE(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {table} t"
    ))[0]
        .clone()
}

#[test]
fn every_column_type_survives_the_trip_in_copy_and_in_catch_up() {
    let (project, other) = two_servers();
    // Built-in types travel as binary COPY; an enum and a domain (server-local type
    // ids) make the copy use text COPY instead. Each is its own job.
    let custom = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE DOMAIN positive AS int CHECK (VALUE > 0);";
    project
        .db
        .client()
        .batch_execute(&format!(
            "{custom}
             CREATE TABLE kinds ({KINDS_COLUMNS});
             INSERT INTO kinds {rows};
             CREATE TABLE custom ({KINDS_COLUMNS}, m mood, p positive);
             INSERT INTO custom SELECT k.*, (ARRAY['sad', 'ok', 'happy'])[1 + k.id % 3]::mood, (k.id + 1)::positive FROM kinds k;",
            rows = kinds_rows(1, 3_000)
        ))
        .unwrap();
    for (table, columns, expand_types) in [
        ("kinds", KINDS_COLUMNS.to_string(), ""),
        (
            "custom",
            format!("{KINDS_COLUMNS}, m mood, p positive"),
            custom,
        ),
    ] {
        let expand = format!("{expand_types} CREATE TABLE public.{table}_v2 ({columns})")
            .replace('"', "\\\"");
        let job = format!(
            "name = \"{table}\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.{table}\"\n\
             [target]\ndatabase = \"other\"\ntable = \"public.{table}_v2\"\n\
             [expand]\nsql = [\"{expand}\"]\n[copy]\nbatch_size = 700\nconcurrency = 2\n\
             [cutover]\nmode = \"manual\"\n\
             [contract]\nafter = \"manual\"\nsql = [\"DROP TABLE public.{table}_old\"]\n"
        );
        let file = project.job_file(table, &job);
        project.run(&["job", "run", &file]).ok();
        // Changes of every column, applied by catch-up: updates (some leaving the
        // TOASTed column out), inserts, key changes, deletes.
        project
            .db
            .client()
            .batch_execute(&format!(
                "UPDATE {table} SET n = n * 2, j = j || '{{\"changed\": true}}', ints = ints || 7, b = b || '\\x01'::bytea,
                        ts = ts + interval '1 microsecond', texts = texts || ARRAY[NULL]::text[] WHERE id % 10 = 1;
                 UPDATE {table} SET long = long || 'x' WHERE id % 25 = 0;
                 UPDATE {table} SET id = id + 100000 WHERE id % 97 = 0;
                 DELETE FROM {table} WHERE id % 89 = 0;
                 INSERT INTO {table} (id, n, long) SELECT id + 50000, n, long FROM {table} WHERE id <= 40;"
            ))
            .unwrap();
        let source = digest(&project.db, table);
        project.run(&["job", "cutover", table]).ok();
        assert_eq!(
            digest(&other, table),
            source,
            "{table}: every value arrives byte for byte"
        );
        assert!(
            !other.exists(&format!("{table}_v2")),
            "the target took the name"
        );
        assert_eq!(digest(&project.db, &format!("{table}_old")), source);
        // The contract drops the fenced source (on the source's server); the job stays
        // done when run again.
        project.run(&["job", "contract", table]).ok();
        assert!(!project.db.exists(&format!("{table}_old")));
        let again = project.run(&["job", "run", &file]).ok().stdout;
        assert!(
            again.starts_with(&format!("job {table}: done\n")),
            "{again}"
        );
        assert_eq!(digest(&other, table), source);
    }
}

#[test]
fn abort_before_cutover_leaves_both_servers_as_they_were() {
    let (project, other) = two_servers();
    let mut source = project.db.client();
    create_items(&mut source, "items", 3_000);
    let before = digest(&project.db, "items");
    let file = project.job_file("items", &items_across(""));
    project.run(&["job", "run", &file]).ok();
    assert!(other.exists("items"));
    project.run(&["job", "abort", "items"]).ok();
    assert!(!other.exists("items"), "the target expand created is gone");
    assert_eq!(digest(&project.db, "items"), before);
    assert!(!project.db.exists("items_old"));
    for db in [&project.db, &other] {
        assert_eq!(slots(db), ["0"]);
        assert_eq!(publications(db), ["0"]);
    }
    assert_eq!(
        other.column("SELECT count(*)::text FROM switchyard.copy_progress"),
        ["0"]
    );
    assert_eq!(project.job_status("items")["phase"], "aborted");
}

#[test]
fn a_target_server_that_goes_away_mid_copy_is_retried_and_the_job_ends_equal() {
    let (project, other) = two_servers();
    let mut source = project.db.client();
    create_items(&mut source, "items", 20_000);
    let proxy = Proxy::start(url::Url::parse(&other.url).unwrap().port().unwrap());
    let file = project.job_file(
        "items",
        &items_across("[cutover]\nmode = \"auto\"\n")
            .replace("[copy]\n", "[copy]\nrows_per_second = 6000\n"),
    );
    let child = project
        .command(&["job", "run", &file])
        .env(
            "SWITCHYARD__DATABASES__OTHER__URL",
            proxy.url_for(&other.url),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() >= Some(3_000)
    });
    let cut = proxy.cut();
    assert!(
        cut >= 3,
        "the job's target connections go through the proxy ({cut} cut)"
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("transient error; reconnecting"), "{stderr}");
    assert_eq!(project.job_status("items")["phase"], "cutover");
    assert_eq!(
        digest(&other, "items"),
        digest(&project.db, "items_old"),
        "nothing lost or duplicated across the cut"
    );
}

/// Bad input exits 2 naming the file and the field, and creates nothing on either server.
#[test]
fn targets_that_cannot_be_reached_or_cannot_take_the_rows_are_refused() {
    let (project, other) = two_servers();
    let mut source = project.db.client();
    create_items(&mut source, "items", 100);
    let config = common::read(&project.path("config/switchyard.toml"))
        + "[databases.mongodb]\nkind = \"mongodb\"\nurl = \"mongodb://127.0.0.1:27017/app\"\n";
    std::fs::write(project.path("config/switchyard.toml"), config).unwrap();
    let cases = [
        (
            items_across("").replace("database = \"other\"", "database = \"nosuch\""),
            "jobs/items.toml: field `target.database`: no database named `nosuch` in the configuration\n",
        ),
        (
            items_across("").replace("database = \"other\"", "database = \"mongodb\""),
            "jobs/items.toml: field `target.database`: `mongodb` is mongodb: there is no path from postgresql to mongodb in this version (PostgreSQL copies into PostgreSQL, on the same or another server, or into an Elasticsearch index)\n",
        ),
        (
            items_across("").replace("v text NOT NULL", "v integer NOT NULL"),
            "jobs/items.toml: field `target.table`: column `v` of public.items is integer, which cannot take the source's text",
        ),
        (
            items_across("").replace("pad text)", "pad text, extra int NOT NULL)"),
            "jobs/items.toml: field `target.table`: column `extra` of public.items is NOT NULL without a default, and the source has no column of that name: fill it under [transform] columns\n",
        ),
    ];
    for (i, (job, expected)) in cases.into_iter().enumerate() {
        let name = format!("case{i}");
        let job = job.replace("name = \"items\"", &format!("name = \"{name}\""));
        let file = project.job_file(&name, &job);
        let run = project.run(&["job", "run", &file]).expect_code(2);
        let expected = expected.replace("jobs/items.toml", &file);
        assert!(
            run.stderr.starts_with(&format!("error: {expected}")),
            "expected `{expected}`, got `{}`",
            run.stderr
        );
        assert!(
            !other.exists("items"),
            "nothing is left on the target server"
        );
        assert_eq!(slots(&project.db), ["0"]);
    }
}
