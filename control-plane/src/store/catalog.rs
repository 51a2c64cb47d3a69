//! The catalog's table: one row per indexed name, its dependencies joined
//! by `,` (which no name holds). Changes come in batches from the
//! catalog's [`GroupCommit`](super::GroupCommit): one transaction each.

use rusqlite::params;

use super::{Store, StoreError};
use crate::core::catalog::{Change, Name};

impl Store {
    /// Every indexed name and its dependencies, in no particular order.
    pub fn load_catalog(&self) -> Result<Vec<(Name, Vec<Name>)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT name, dependencies FROM catalog")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let corrupt = |name: &str| StoreError::Corrupt(format!("catalog entry {name:?}"));
        let mut entries = Vec::new();
        for row in rows {
            let (name, dependencies) = row?;
            let parsed = Name::parse(&name).map_err(|_| corrupt(&name))?;
            let dependencies = dependencies
                .split(',')
                .filter(|d| !d.is_empty())
                .map(Name::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| corrupt(&name))?;
            entries.push((parsed, dependencies));
        }
        Ok(entries)
    }

    /// Writes `changes` in order in one transaction: one sync to disk for
    /// all of them, and none of them if it fails.
    pub fn apply_catalog<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO catalog (name, dependencies) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET dependencies = excluded.dependencies",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM catalog WHERE name = ?1")?;
            let mut joined = String::new();
            for change in changes {
                match change {
                    Change::Index { name, dependencies } => {
                        joined.clear();
                        for (i, dependency) in dependencies.iter().enumerate() {
                            if i > 0 {
                                joined.push(',');
                            }
                            joined.push_str(dependency.as_str());
                        }
                        put.execute(params![name.as_str(), joined])?;
                    }
                    Change::Remove { name } => {
                        delete.execute(params![name.as_str()])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalog::Graph;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    /// What was written reads back as the same catalog, after a reopen.
    #[test]
    fn the_catalog_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let changes = [
            Change::Index {
                name: name("zlib"),
                dependencies: vec![],
            },
            Change::Index {
                name: name("gtk+"),
                dependencies: vec![],
            },
            Change::Index {
                name: name("libsigc++"),
                dependencies: vec![name("gtk+"), name("zlib")],
            },
            Change::Index {
                name: name("ñandú"),
                dependencies: vec![name("libsigc++")],
            },
            Change::Remove {
                name: name("ñandú"),
            },
            Change::Index {
                name: name("libsigc++"),
                dependencies: vec![name("zlib")],
            },
        ];
        let mut expected = Graph::default();
        for change in &changes {
            expected.apply(change).expect("accepted");
        }
        {
            let store = Store::open(dir.path()).expect("open");
            store.apply_catalog(&changes[..3]).expect("written");
            store.apply_catalog(&changes[3..]).expect("written");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let restored = Graph::restore(store.load_catalog().expect("load")).expect("whole");
        assert_eq!(restored, expected);
        assert!(restored.is_indexed("gtk+") && !restored.is_indexed("ñandú"));
    }
}
