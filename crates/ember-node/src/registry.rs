//! The function registry: one row per function in an embedded SQLite database
//! (`registry.db`, WAL journal, `synchronous=FULL`), so a deploy is one transaction and a
//! crash leaves the previous or the new version, never a mixture.
//!
//! ```text
//! functions(name TEXT PRIMARY KEY, version INTEGER, record TEXT /* FunctionRecord JSON */)
//! PRAGMA user_version = 1
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::function::FunctionRecord;

const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("registry {path} has schema version {found}; this ember understands {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: i64 },
    #[error("encoding the record of {0} failed: {1}")]
    Encode(String, serde_json::Error),
}

pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Registry {
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let sql = |source| RegistryError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        match found {
            0 => {
                conn.execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS functions(
                         name TEXT PRIMARY KEY,
                         version INTEGER NOT NULL,
                         record TEXT NOT NULL);
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(sql)?;
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(RegistryError::Schema {
                    path: path.to_path_buf(),
                    found,
                });
            }
        }
        Ok(Registry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every function whose record decodes; a row that does not is logged and skipped.
    pub fn load_all(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, record FROM functions ORDER BY name")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, text) = row.map_err(|e| self.sql(e))?;
            match serde_json::from_str(&text) {
                Ok(rec) => out.push(rec),
                Err(e) => {
                    tracing::error!(function = %name, "skipping an unreadable registry row: {e}")
                }
            }
        }
        Ok(out)
    }

    /// The version the next write of `name` gets.
    pub fn next_version(&self, name: &str) -> Result<u64, RegistryError> {
        let v: Option<i64> = self
            .conn()
            .query_row(
                "SELECT version FROM functions WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(v.map_or(1, |v| v as u64 + 1))
    }

    /// Creates or replaces a function's record in one transaction.
    pub fn put(&self, rec: &FunctionRecord) -> Result<(), RegistryError> {
        let text =
            serde_json::to_string(rec).map_err(|e| RegistryError::Encode(rec.name.clone(), e))?;
        self.conn()
            .execute(
                "INSERT INTO functions(name, version, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET version = excluded.version, record = excluded.record",
                params![rec.name, rec.version as i64, text],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes a function; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        let n = self
            .conn()
            .execute("DELETE FROM functions WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::FunctionConfig;

    fn rec(name: &str, version: u64) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            version,
            config: serde_json::from_value(serde_json::json!({"handler": "m.h"})).unwrap(),
            code_hash: "c".into(),
            env_key: "e".into(),
            created_at: 1,
            updated_at: 2,
            code_sha256: String::new(),
            code_size: 0,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registry.db");
        {
            let r = Registry::open(&p).unwrap();
            assert_eq!(r.next_version("a").unwrap(), 1);
            r.put(&rec("a", 1)).unwrap();
            r.put(&rec("b", 1)).unwrap();
            r.put(&rec("a", 2)).unwrap();
            assert_eq!(r.next_version("a").unwrap(), 3);
            assert!(r.delete("b").unwrap());
            assert!(!r.delete("b").unwrap());
        }
        let r = Registry::open(&p).unwrap();
        let all = r.load_all().unwrap();
        assert_eq!(all, vec![rec("a", 2)]);
        let _: &FunctionConfig = &all[0].config;
    }

    #[test]
    fn unreadable_rows_are_skipped_and_foreign_schemas_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registry.db");
        let r = Registry::open(&p).unwrap();
        r.put(&rec("a", 1)).unwrap();
        r.conn()
            .execute("INSERT INTO functions VALUES ('bad', 1, 'not json')", [])
            .unwrap();
        assert_eq!(r.load_all().unwrap().len(), 1);
        r.conn().pragma_update(None, "user_version", 7).unwrap();
        drop(r);
        let err = Registry::open(&p).err().unwrap();
        assert!(err.to_string().contains("schema version 7"), "{err}");
    }
}
