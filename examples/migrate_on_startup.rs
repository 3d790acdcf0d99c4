//! An application that brings its database up to date before it starts serving, the way
//! sqlx's `migrate!` or refinery's `embed_migrations!` are used: the migrations are the
//! files of a folder (any format switchyard reads), applied under switchyard's lock and
//! recorded in `switchyard_migrations`, so the CLI's `status` and `rollback` see them.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@localhost:54329/postgres \
//!     cargo run --example migrate_on_startup -- migrations/postgresql
//! ```

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("set DATABASE_URL to the database to migrate (postgres://…, mongodb://…, http://… for Elasticsearch)");
        return ExitCode::from(2);
    };
    let folder = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "migrations/postgresql".to_string());
    match start(&url, &folder).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn start(url: &str, folder: &str) -> switchyard::Result<()> {
    let migrator = switchyard::Migrator::new(url, folder)?;
    let applied = migrator.migrate().await?;
    for migration in &applied {
        println!(
            "applied {} {} in {}ms",
            migration.version,
            migration.name,
            migration.duration.as_millis()
        );
    }
    let rows = migrator.status().await?;
    println!(
        "{} migrations, {} applied now; the application can start",
        rows.len(),
        applied.len()
    );
    Ok(())
}
