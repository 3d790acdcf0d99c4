//! The order of migrations across databases: each database's own in version order,
//! interleaved so that a migration runs after every version its `depends_on` names, and
//! rolled back before any version it needs is undone. Pure decisions, unit-tested.
//!
//! The graph: each database's migrations form a chain (version order, repeatable ones
//! last); `depends_on: {B: v}` adds the edge "B's migration v before this one". A folder
//! set is valid when every edge names a known database and version and the graph has no
//! cycle; then an order exists for any set of pending migrations whose dependencies are
//! applied or pending too.

use std::collections::{BTreeMap, VecDeque};

use super::files::Migration;
use super::version::Version;
use super::DatabaseMigrations;
use crate::error::{Error, FileProblem, Result};

/// One migration of one database.
pub type Step<'m> = (&'m str, &'m Migration);

/// Problems of the `depends_on` edges among `databases`: an unknown database or version,
/// and cycles.
pub fn check_dependencies(databases: &[DatabaseMigrations]) -> Vec<FileProblem> {
    let mut problems = Vec::new();
    let mut index: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut nodes: Vec<(usize, usize)> = Vec::new();
    for (d, database) in databases.iter().enumerate() {
        for m in 0..database.migrations.len() {
            index.insert((d, m), nodes.len());
            nodes.push((d, m));
        }
    }
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut incoming = vec![0usize; nodes.len()];
    for (d, database) in databases.iter().enumerate() {
        for (m, migration) in database.migrations.iter().enumerate() {
            let node = index[&(d, m)];
            if m > 0 {
                edges[index[&(d, m - 1)]].push(node);
                incoming[node] += 1;
            }
            for dependency in &migration.depends_on {
                let Some(other) = databases.iter().position(|o| o.name == dependency.database)
                else {
                    problems.push(FileProblem {
                        file: migration.main_file().to_path_buf(),
                        reason: format!(
                            "depends_on `{}`: no database of that name is configured",
                            dependency.database
                        ),
                    });
                    continue;
                };
                let target = &databases[other];
                let Some(k) = target
                    .migrations
                    .iter()
                    .position(|t| t.version == dependency.version)
                else {
                    problems.push(FileProblem {
                        file: migration.main_file().to_path_buf(),
                        reason: format!(
                            "depends_on {}={}: {} has no migration with that version",
                            dependency.database,
                            dependency.version,
                            target.folder.display()
                        ),
                    });
                    continue;
                };
                edges[index[&(other, k)]].push(node);
                incoming[node] += 1;
            }
        }
    }
    // Kahn's algorithm: what is never freed lies on a cycle or after one.
    let mut free: VecDeque<usize> = (0..nodes.len()).filter(|&n| incoming[n] == 0).collect();
    while let Some(node) = free.pop_front() {
        for &next in &edges[node] {
            incoming[next] -= 1;
            if incoming[next] == 0 {
                free.push_back(next);
            }
        }
    }
    let stuck: Vec<(usize, usize)> = nodes
        .iter()
        .zip(&incoming)
        .filter(|(_, &count)| count > 0)
        .map(|(&node, _)| node)
        .collect();
    if let Some(&(d, m)) = stuck.first() {
        let named: Vec<String> = stuck
            .iter()
            .map(|&(d, m)| {
                format!(
                    "{} {}",
                    databases[d].name, databases[d].migrations[m].version
                )
            })
            .collect();
        problems.push(FileProblem {
            file: databases[d].migrations[m].main_file().to_path_buf(),
            reason: format!(
                "depends_on makes a cycle: none of {} can run first",
                named.join(", ")
            ),
        });
    }
    problems
}

/// Each database's queue of migrations, in the order they must run within it.
type Queues<'m> = Vec<(&'m str, VecDeque<&'m Migration>)>;

/// Takes, again and again, the head of the first queue that `ready(head, taken, queues)`
/// allows, until every queue is empty: the interleaved order. `Err` holds the heads left
/// when none is ready.
fn interleave<'m>(
    queues: Vec<(&'m str, Vec<&'m Migration>)>,
    ready: impl Fn(Step<'m>, &[Step<'m>], &Queues<'m>) -> bool,
) -> std::result::Result<Vec<Step<'m>>, Vec<Step<'m>>> {
    let mut queues: Queues<'m> = queues
        .into_iter()
        .map(|(name, list)| (name, list.into()))
        .collect();
    let mut order: Vec<Step<'m>> = Vec::new();
    loop {
        let heads: Vec<(usize, Step<'m>)> = queues
            .iter()
            .enumerate()
            .filter_map(|(i, (name, queue))| queue.front().map(|head| (i, (*name, *head))))
            .collect();
        if heads.is_empty() {
            return Ok(order);
        }
        match heads.iter().find(|(_, head)| ready(*head, &order, &queues)) {
            Some((i, head)) => {
                queues[*i].1.pop_front();
                order.push(*head);
            }
            None => return Err(heads.into_iter().map(|(_, head)| head).collect()),
        }
    }
}

/// Interleaves the pending migrations of several databases (`queues`, each in version
/// order) so that each runs after the versions it depends on. `reached(database,
/// version)` says whether a database already has a version applied. Refused, naming the
/// migration and what it waits for, when a dependency is neither applied nor pending.
pub fn order_up<'m>(
    queues: Vec<(&'m str, Vec<&'m Migration>)>,
    reached: impl Fn(&str, &Version) -> bool,
) -> Result<Vec<Step<'m>>> {
    let ready = |(_, head): Step<'m>, order: &[Step<'m>], queues: &Queues<'m>| {
        head.depends_on.iter().all(|dependency| {
            let done = reached(&dependency.database, &dependency.version)
                || order.iter().any(|(name, m)| {
                    *name == dependency.database && m.version == dependency.version
                });
            // Every version of that database up to the one named, not only that one.
            let waiting = queues
                .iter()
                .filter(|(name, _)| *name == dependency.database)
                .any(|(_, queue)| queue.iter().any(|m| m.version <= dependency.version));
            done && !waiting
        })
    };
    interleave(queues, ready).map_err(|heads| {
        let blocked: Vec<String> = heads
            .iter()
            .map(|(name, head)| {
                let needs: Vec<String> = head
                    .depends_on
                    .iter()
                    .map(|d| format!("{} {}", d.database, d.version))
                    .collect();
                format!(
                    "{}: {name} {} needs {}, which is not applied and not pending in this run",
                    head.main_file().display(),
                    head.version,
                    needs.join(" and ")
                )
            })
            .collect();
        Error::Refused(format!(
            "nothing was changed:\n{}\napply those first (or include their databases with --databases)",
            blocked.join("\n")
        ))
    })
}

/// Orders rollbacks across databases (`queues`, each newest first) so that a migration is
/// undone only once nothing still applied depends on it. `applied` lists every applied
/// migration known (repeatable ones are never rolled back, so they do not hold others
/// back). Refused when a migration that stays applied depends on one being undone.
pub fn order_down<'m>(
    queues: Vec<(&'m str, Vec<&'m Migration>)>,
    applied: &[Step<'m>],
) -> Result<Vec<Step<'m>>> {
    let same = |a: &Step<'m>, b: &Step<'m>| a.0 == b.0 && a.1.version == b.1.version;
    // `dependent` needs `database` at a version `version` is not after.
    let breaks = |dependent: &Step<'m>, database: &str, version: &Version| {
        dependent
            .1
            .depends_on
            .iter()
            .any(|d| d.database == database && version <= &d.version)
    };
    let to_undo: Vec<Step<'m>> = queues
        .iter()
        .flat_map(|(name, list)| list.iter().map(|m| (*name, *m)))
        .collect();
    let held: Vec<&Step<'m>> = applied.iter().filter(|s| !s.1.is_repeatable()).collect();
    let mut problems = Vec::new();
    for (database, m) in &to_undo {
        for stays in held
            .iter()
            .filter(|s| !to_undo.iter().any(|u| same(u, s)) && breaks(s, database, &m.version))
        {
            problems.push(format!(
                "undoing {database} {} would break {} {} ({}), which depends on it and stays applied",
                m.version,
                stays.0,
                stays.1.version,
                stays.1.main_file().display()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "rollback refused, nothing was changed:\n{}\nroll those back first (or include their databases with --databases)",
            problems.join("\n")
        )));
    }
    let ready = |head: Step<'m>, order: &[Step<'m>], _: &Queues<'m>| {
        held.iter()
            .filter(|s| !same(s, &head) && !order.iter().any(|o| same(o, s)))
            .all(|s| !breaks(s, head.0, &head.1.version))
    };
    interleave(queues, ready).map_err(|_| {
        Error::Refused(
            "rollback refused, nothing was changed: the depends_on edges of the migrations to undo form a cycle (run `switchyard validate`)".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseKind;
    use crate::migrate::files::Dependency;
    use std::path::PathBuf;

    fn migration(version: &str, depends_on: &[(&str, &str)]) -> Migration {
        let mut migration = Migration::for_test(Version::parse(version).unwrap(), "m");
        migration.depends_on = depends_on
            .iter()
            .map(|(d, v)| Dependency {
                database: d.to_string(),
                version: Version::parse(v).unwrap(),
            })
            .collect();
        migration
    }

    fn database(name: &str, migrations: Vec<Migration>) -> DatabaseMigrations {
        DatabaseMigrations {
            name: name.to_string(),
            kind: DatabaseKind::Postgresql,
            folder: PathBuf::from(format!("migrations/{name}")),
            migrations,
        }
    }

    fn names(order: &[Step<'_>]) -> Vec<String> {
        order
            .iter()
            .map(|(d, m)| format!("{d} {}", m.version))
            .collect()
    }

    #[test]
    fn an_edge_interleaves_two_databases() {
        let a = database(
            "a",
            vec![migration("1", &[]), migration("2", &[("b", "1")])],
        );
        let b = database(
            "b",
            vec![migration("1", &[("a", "1")]), migration("2", &[])],
        );
        assert!(check_dependencies(&[
            database("a", a.migrations.clone()),
            database("b", b.migrations.clone())
        ])
        .is_empty());
        let queues = vec![
            ("a", a.migrations.iter().collect()),
            ("b", b.migrations.iter().collect()),
        ];
        let order = order_up(queues, |_, _| false).unwrap();
        assert_eq!(names(&order), ["a 1", "b 1", "a 2", "b 2"]);
    }

    #[test]
    fn a_dependency_already_applied_or_missing() {
        let a = database("a", vec![migration("2", &[("b", "1")])]);
        let queue = || vec![("a", a.migrations.iter().collect())];
        let order = order_up(queue(), |d, v| d == "b" && v.as_str() == "1").unwrap();
        assert_eq!(names(&order), ["a 2"]);
        let refused = order_up(queue(), |_, _| false).unwrap_err().to_string();
        assert!(
            refused.contains("a 2 needs b 1, which is not applied and not pending in this run"),
            "{refused}"
        );
    }

    #[test]
    fn cycles_and_unknown_targets_are_problems() {
        let problems = check_dependencies(&[
            database("a", vec![migration("1", &[("b", "2")])]),
            database(
                "b",
                vec![migration("1", &[]), migration("2", &[("a", "1")])],
            ),
        ]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .reason
                .starts_with("depends_on makes a cycle: none of a 1, b 2"),
            "{problems:?}"
        );
        let problems = check_dependencies(&[database(
            "a",
            vec![migration("1", &[("b", "2"), ("a", "7")])],
        )]);
        let reasons: Vec<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "depends_on `b`: no database of that name is configured",
                "depends_on a=7: migrations/a has no migration with that version"
            ]
        );
    }

    #[test]
    fn rollback_undoes_dependents_first_and_refuses_to_strand_one() {
        let a = database("a", vec![migration("1", &[]), migration("2", &[])]);
        let b = database("b", vec![migration("1", &[("a", "2")])]);
        let applied: Vec<Step<'_>> = vec![
            ("a", &a.migrations[0]),
            ("a", &a.migrations[1]),
            ("b", &b.migrations[0]),
        ];
        let queues = vec![
            ("a", vec![&a.migrations[1], &a.migrations[0]]),
            ("b", vec![&b.migrations[0]]),
        ];
        let order = order_down(queues, &applied).unwrap();
        assert_eq!(names(&order), ["b 1", "a 2", "a 1"]);
        let refused = order_down(vec![("a", vec![&a.migrations[1]])], &applied)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(
                "undoing a 2 would break b 1 (1_m.sql), which depends on it and stays applied"
            ),
            "{refused}"
        );
    }
}
