//! Cutover carries what depends on the source to the new table: views (nested ones
//! too), materialized views, foreign keys (from a partitioned table too), triggers,
//! grants, policies, comments and publications; an abort after cutover carries them
//! back. The change is the most common there is: an `int` key widened to `bigint`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::writer::{create_items, items_copy_job, seed, Lcg};
use common::Project;

const SCHEMA: &str = "
CREATE TABLE rental (id int PRIMARY KEY, v text NOT NULL, last_update timestamptz NOT NULL DEFAULT now());
INSERT INTO rental (id, v) SELECT g, 'v' || g FROM generate_series(1, 3000) g;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.last_update := now(); RETURN NEW; END $$;
CREATE TRIGGER rental_touch BEFORE UPDATE ON rental FOR EACH ROW EXECUTE FUNCTION touch();
CREATE TABLE payment (id bigserial, rental_id int NOT NULL REFERENCES rental (id), tenant int NOT NULL,
                      PRIMARY KEY (id, tenant)) PARTITION BY LIST (tenant);
CREATE TABLE payment_0 PARTITION OF payment FOR VALUES IN (0);
CREATE TABLE payment_1 PARTITION OF payment FOR VALUES IN (1);
INSERT INTO payment (rental_id, tenant) SELECT g, g % 2 FROM generate_series(1, 3000, 3) g;
CREATE TABLE note (id serial PRIMARY KEY, rental_id int REFERENCES rental (id) ON DELETE CASCADE);
INSERT INTO note (rental_id) SELECT g FROM generate_series(1, 3000, 7) g;
CREATE VIEW even_rentals AS SELECT id, v FROM rental WHERE id % 2 = 0;
CREATE VIEW even_count AS SELECT count(*) AS n FROM even_rentals;
CREATE MATERIALIZED VIEW rental_totals AS SELECT count(*) AS n, max(id) AS top FROM rental;
CREATE UNIQUE INDEX rental_totals_n ON rental_totals (n);
GRANT SELECT ON rental TO PUBLIC;
GRANT SELECT ON even_rentals TO PUBLIC;
COMMENT ON TABLE rental IS 'one row a rental';
COMMENT ON COLUMN rental.v IS 'what was rented';
CREATE PUBLICATION downstream FOR TABLE rental;
ALTER TABLE rental ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone ON rental USING (true);
";

const JOB: &str = r#"name = "rental"
kind = "copy"

[source]
database = "postgresql"
table = "public.rental"

[target]
database = "postgresql"
table = "public.rental_v2"

[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.rental_v2 (id bigint PRIMARY KEY, v text NOT NULL, last_update timestamptz NOT NULL DEFAULT now())"]

[copy]
batch_size = 500
rows_per_second = 20000

[cutover]
mode = "auto"

[contract]
after = "manual"
"#;

/// Inserts and updates rentals and inserts payments referencing them, until stopped:
/// the model keeps the rentals that committed.
struct RentalWriter {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<BTreeMap<i32, String>>,
}

impl RentalWriter {
    fn start(url: &str, model: BTreeMap<i32, String>) -> RentalWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (url.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut client = common::connect(&url).unwrap();
            let mut model = model;
            let mut random = Lcg::new(seed());
            let mut next_id = 1_000_000;
            while !flag.load(Ordering::SeqCst) {
                let id = *model
                    .keys()
                    .nth(random.below(model.len() as u64) as usize)
                    .unwrap();
                let value = format!("w{}", random.next());
                // `$1::int`: the key is `int` before cutover and `bigint` after.
                match random.below(3) {
                    0 => {
                        client
                            .execute(
                                "INSERT INTO rental (id, v) VALUES ($1::int, $2)",
                                &[&next_id, &value],
                            )
                            .unwrap();
                        model.insert(next_id, value);
                        next_id += 1;
                    }
                    1 => {
                        client
                            .execute(
                                "UPDATE rental SET v = $2 WHERE id = $1::int",
                                &[&id, &value],
                            )
                            .unwrap();
                        model.insert(id, value);
                    }
                    _ => {
                        client
                            .execute(
                                "INSERT INTO payment (rental_id, tenant) VALUES ($1::int, $1::int % 2)",
                                &[&id],
                            )
                            .unwrap();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            model
        });
        RentalWriter { stop, handle }
    }

    fn stop(self) -> BTreeMap<i32, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

fn rentals(project: &Project) -> BTreeMap<i32, String> {
    project
        .db
        .client()
        .query("SELECT id::int, v FROM rental", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// What depends on `rental`, as the catalog says: each line names the dependent and
/// the table it uses now (`rental` or `rental_old`, and its key's type).
fn dependents_of_rental(project: &Project) -> Vec<String> {
    project.db.column(
        "SELECT 'view ' || v.relname || ' reads ' || t.relname || ' (' || format_type(a.atttypid, NULL) || ')'
           FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
           JOIN pg_class t ON t.oid = d.refobjid AND t.relname LIKE 'rental%' AND t.relkind IN ('r', 'p')
           JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = 'id'
          WHERE v.oid <> t.oid GROUP BY 1
         UNION ALL
         SELECT 'foreign key ' || conname || ' on ' || conrelid::regclass::text || ' references '
                || confrelid::regclass::text || CASE WHEN convalidated THEN ' (valid)' ELSE ' (NOT VALID)' END
           FROM pg_constraint WHERE contype = 'f'
         UNION ALL
         SELECT 'trigger ' || tgname || ' on ' || tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal
         UNION ALL
         SELECT 'publication downstream has ' || prrelid::regclass::text FROM pg_publication_rel r
           JOIN pg_publication p ON p.oid = r.prpubid AND p.pubname = 'downstream'
         UNION ALL
         SELECT 'policy ' || polname || ' on ' || polrelid::regclass::text FROM pg_policy
         UNION ALL
         SELECT 'grant on ' || c.relname || ' to PUBLIC' FROM pg_class c, aclexplode(c.relacl) a
          WHERE c.relname LIKE 'rental%' AND a.grantee = 0
         UNION ALL
         SELECT 'comment on ' || c.relname || ': ' || obj_description(c.oid, 'pg_class')
           FROM pg_class c WHERE c.relname LIKE 'rental%' AND obj_description(c.oid, 'pg_class') IS NOT NULL
         UNION ALL
         SELECT 'row level security on ' || relname FROM pg_class WHERE relrowsecurity
         ORDER BY 1",
    )
}

#[test]
fn an_int_key_widened_to_bigint_carries_views_foreign_keys_and_the_rest_and_abort_carries_them_back(
) {
    let project = Project::new();
    project.db.client().batch_execute(SCHEMA).unwrap();
    let file = project.job_file("rental", JOB);

    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(!plan.stdout.contains("BLOCKS CUTOVER"), "{}", plan.stdout);
    for line in [
        "view even_rentals: re-created on the new table at cutover",
        "foreign key payment_rental_id_fkey on payment: re-pointed at the new table at cutover (NOT VALID), validated right after without blocking writes",
        "materialized view rental_totals: keeps its rows through cutover, then is rebuilt on the new table and swapped in",
        "trigger rental_touch: copied to the new table at cutover",
        "publication downstream: copied to the new table at cutover",
    ] {
        assert!(plan.stdout.contains(line), "no `{line}` in:\n{}", plan.stdout);
    }

    let writer = RentalWriter::start(&project.db.url, rentals(&project));
    let run = project.run(&["job", "run", &file]).ok();
    assert!(
        run.stdout.starts_with("job rental: waiting for contract"),
        "{}",
        run.stdout
    );
    // The writer goes on writing to the new table.
    project.db.wait_for(
        "SELECT (count(*) >= 20)::text FROM rental WHERE id >= 1000000 AND pg_typeof(id) = 'bigint'::regtype",
        "true",
    );
    let model = writer.stop();
    assert_eq!(rentals(&project), model);
    assert_eq!(
        dependents_of_rental(&project),
        [
            "comment on rental: one row a rental",
            "comment on rental_old: one row a rental",
            "foreign key note_rental_id_fkey on note references rental (valid)",
            "foreign key payment_rental_id_fkey on payment references rental (valid)",
            "foreign key payment_rental_id_fkey on payment_0 references rental (valid)",
            "foreign key payment_rental_id_fkey on payment_1 references rental (valid)",
            "grant on rental to PUBLIC",
            "grant on rental_old to PUBLIC",
            "policy everyone on rental",
            "policy everyone on rental_old",
            "publication downstream has rental",
            "row level security on rental",
            "row level security on rental_old",
            "trigger rental_touch on rental",
            "trigger rental_touch on rental_old",
            "view even_rentals reads rental (bigint)",
            "view rental_totals reads rental (bigint)",
        ]
    );
    // Enforced: an orphan is refused, from the partitioned table too.
    let mut db = project.db.client();
    for insert in [
        "INSERT INTO payment (rental_id, tenant) VALUES (2000000000, 0)",
        "INSERT INTO note (rental_id) VALUES (2000000000)",
    ] {
        let refused = db.execute(insert, &[]).unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&postgres::error::SqlState::FOREIGN_KEY_VIOLATION),
            "{insert}"
        );
    }
    let even: i64 = model.keys().filter(|id| *id % 2 == 0).count() as i64;
    assert_eq!(
        project.db.column("SELECT n::text FROM even_count"),
        [even.to_string()]
    );
    assert_eq!(
        project
            .db
            .column("SELECT has_table_privilege('public', 'even_rentals', 'SELECT')::text"),
        ["true"]
    );
    assert_eq!(
        project
            .db
            .column("SELECT col_description('rental'::regclass, 2)"),
        ["what was rented"]
    );

    // Abort after cutover: the old table takes its name back, and its dependents with it.
    let abort = project.run(&["job", "abort", "rental"]).ok();
    assert_eq!(abort.stdout, "job rental: aborted\n");
    assert_eq!(rentals(&project), model);
    let after = dependents_of_rental(&project);
    for line in [
        "foreign key note_rental_id_fkey on note references rental (valid)",
        "foreign key payment_rental_id_fkey on payment references rental (valid)",
        "publication downstream has rental",
        "view even_rentals reads rental (integer)",
        "view rental_totals reads rental (integer)",
    ] {
        assert!(
            after.contains(&line.to_string()),
            "no `{line}` in {after:#?}"
        );
    }
}

/// What cannot be carried blocks cutover, with the reason, before anything changes; and
/// `dependents = "refuse"` keeps cutover from carrying anything, refusing as long as a
/// view reads the source.
#[test]
fn what_cannot_be_carried_blocks_cutover_and_refuse_carries_nothing() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 1_000);
    db.batch_execute(
        "CREATE VIEW items_pads AS SELECT id, pad FROM items;
         ALTER TABLE items ADD CONSTRAINT items_v_key UNIQUE (v);
         CREATE TABLE tags (id bigint PRIMARY KEY, item text REFERENCES items (v))",
    )
    .unwrap();
    // The new table has no `pad` and no unique index on `v`.
    let job = items_copy_job("items", "[cutover]\nmode = \"auto\"").replace(
        "(id bigint PRIMARY KEY, v text NOT NULL, pad text)",
        "(id bigint PRIMARY KEY, v text NOT NULL)",
    );
    let file = project.job_file("items", &job);
    project.run(&["job", "run", &file]).expect_code(2);
    let plan = project.run(&["job", "plan", &file]).ok();
    for line in [
        "    BLOCKS CUTOVER foreign key tags_item_fkey on tags: the new table has no unique index on the referenced columns: cannot be carried; change it first, or set [cutover] dependents = \"refuse\" and move it yourself\n",
        "    BLOCKS CUTOVER view items_pads: reads column pad, which the new table lacks: cannot be carried; change it first, or set [cutover] dependents = \"refuse\" and move it yourself\n",
    ] {
        assert!(plan.stdout.contains(line), "no `{line}` in:\n{}", plan.stdout);
    }
    let refused = project.run(&["job", "cutover", "items"]).expect_code(2);
    assert!(
        refused.stderr.contains("cutover refused, it would break:\nforeign key tags_item_fkey on tags: the new table has no unique index"),
        "{}",
        refused.stderr
    );
    assert!(project.db.exists("items") && project.db.exists("items_v2"));

    // Refuse: the view blocks even though it could be carried.
    db.batch_execute(
        "DROP VIEW items_pads; DROP TABLE tags; CREATE VIEW items_ids AS SELECT id FROM items",
    )
    .unwrap();
    let refusing = format!("{job}\ndependents = \"refuse\"\n").replace(
        "mode = \"auto\"\n\ndependents",
        "mode = \"auto\"\ndependents",
    );
    std::fs::write(project.path(&file), refusing).unwrap();
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert!(
        refused.stderr.contains("cutover refused, it would break:\nview items_ids: would keep reading the old table after the rename"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        project.db.column("SELECT relname::text FROM pg_class WHERE relname LIKE 'items%' AND relkind IN ('r', 'v') ORDER BY 1"),
        ["items", "items_ids", "items_v2"]
    );
}
