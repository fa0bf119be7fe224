//! The function registry: one row per function in an embedded SQLite database
//! (`registry.db`, WAL journal, `synchronous=FULL`), so a deploy is one transaction and a
//! crash leaves the previous or the new version, never a mixture.
//!
//! ```text
//! functions(name TEXT PRIMARY KEY, version INTEGER, record TEXT /* FunctionRecord JSON */)
//!     -- a published version is a row of its own, named `name:N`
//! events(id, function, payload, attempts, enqueued_at, next_at)   -- version 2
//!     depth                          -- version 3: destinations' records in a row
//! published(function TEXT PRIMARY KEY, last INTEGER)              -- version 3
//!     -- a layer's last version under `layer/<name>` (no function name has a '/')
//! aliases(function, alias, record TEXT /* Alias JSON */)          -- version 3
//! layers(name, version, record TEXT /* LayerVersion JSON */)      -- version 3
//! PRAGMA user_version = 3
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::function::FunctionRecord;
use crate::layers::LayerVersion;
use crate::versions::{Alias, split_qualified};

const SCHEMA_VERSION: i64 = 3;

/// Version 2 adds the queue of asynchronous (`Event`) invocations.
const EVENTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS events(
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    depth INTEGER NOT NULL DEFAULT 0);
 CREATE INDEX IF NOT EXISTS events_due ON events(next_at);";

/// Version 3 adds published versions' numbers (never used twice for a function) and aliases.
const VERSIONS_TABLES: &str = "CREATE TABLE IF NOT EXISTS published(
    function TEXT PRIMARY KEY,
    last INTEGER NOT NULL);
 CREATE TABLE IF NOT EXISTS aliases(
    function TEXT NOT NULL,
    alias TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY(function, alias));
 CREATE TABLE IF NOT EXISTS layers(
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY(name, version));";

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
                conn.execute_batch(&format!(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS functions(
                         name TEXT PRIMARY KEY,
                         version INTEGER NOT NULL,
                         record TEXT NOT NULL);
                     {EVENTS_TABLE}
                     {VERSIONS_TABLES}
                     PRAGMA user_version = {SCHEMA_VERSION};
                     COMMIT;"
                ))
                .map_err(sql)?;
            }
            1 => {
                conn.execute_batch(&format!(
                    "BEGIN; {EVENTS_TABLE} {VERSIONS_TABLES}
                     PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(sql)?;
            }
            2 => {
                conn.execute_batch(&format!(
                    "BEGIN; ALTER TABLE events ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
                     {VERSIONS_TABLES}
                     PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
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
        self.load(
            "SELECT name, record FROM functions ORDER BY name",
            "function",
        )
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

    /// Removes a function with its published versions and aliases (or, for `name:N`, that
    /// version alone), in one transaction; false when there was none.
    pub fn delete(&self, name: &str) -> Result<bool, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let n = tx
            .execute("DELETE FROM functions WHERE name = ?1", [name])
            .map_err(|e| self.sql(e))?;
        if n > 0 && split_qualified(name).1.is_none() {
            // `substr`, not LIKE: `_` in a name is a wildcard to LIKE.
            tx.execute(
                "DELETE FROM functions WHERE substr(name, 1, length(?1) + 1) = ?1 || ':'",
                [name],
            )
            .and_then(|_| tx.execute("DELETE FROM published WHERE function = ?1", [name]))
            .and_then(|_| tx.execute("DELETE FROM aliases WHERE function = ?1", [name]))
            .map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Publishes a version of `function`: `make(n)` is its record under the next number
    /// (one more than any the function ever had), written in the same transaction.
    pub fn publish(
        &self,
        function: &str,
        make: impl FnOnce(u64) -> FunctionRecord,
    ) -> Result<FunctionRecord, RegistryError> {
        self.numbered(function, make, |rec| {
            Ok((
                "INSERT INTO functions(name, version, record) VALUES (?1, ?2, ?3)",
                rec.name.clone(),
                rec.version as i64,
                serde_json::to_string(rec)
                    .map_err(|e| RegistryError::Encode(rec.name.clone(), e))?,
            ))
        })
    }

    /// Publishes a version of layer `name`: `make(n)` is it under the next number (one more
    /// than any the layer ever had).
    pub fn publish_layer(
        &self,
        name: &str,
        make: impl FnOnce(u64) -> LayerVersion,
    ) -> Result<LayerVersion, RegistryError> {
        self.numbered(&format!("layer/{name}"), make, |l| {
            Ok((
                "INSERT INTO layers(name, version, record) VALUES (?1, ?2, ?3)",
                l.name.clone(),
                l.version as i64,
                serde_json::to_string(l).map_err(|e| RegistryError::Encode(l.name.clone(), e))?,
            ))
        })
    }

    /// In one transaction: the next number of `counter`, what `make` makes with it, and
    /// the row `row` says (statement, key, number, record).
    fn numbered<T>(
        &self,
        counter: &str,
        make: impl FnOnce(u64) -> T,
        row: impl FnOnce(&T) -> Result<(&'static str, String, i64, String), RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let last: i64 = tx
            .query_row(
                "SELECT last FROM published WHERE function = ?1",
                [counter],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .unwrap_or(0);
        let n = last.max(0) as u64 + 1;
        let made = make(n);
        let (sql, key, number, text) = row(&made)?;
        tx.execute(sql, params![key, number, text])
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO published(function, last) VALUES (?1, ?2)
                     ON CONFLICT(function) DO UPDATE SET last = excluded.last",
                    params![counter, n as i64],
                )
            })
            .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(made)
    }

    /// Every layer version whose record decodes, by name and number.
    pub fn load_layers(&self) -> Result<Vec<LayerVersion>, RegistryError> {
        self.load(
            "SELECT name, record FROM layers ORDER BY name, version",
            "layer",
        )
    }

    /// The records `sql` selects (a key and a JSON record per row) that decode; a row that
    /// does not is logged (as a `what`) and skipped.
    fn load<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        what: &str,
    ) -> Result<Vec<T>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, text) = row.map_err(|e| self.sql(e))?;
            match serde_json::from_str(&text) {
                Ok(v) => out.push(v),
                Err(e) => tracing::error!(key = %key, "skipping an unreadable {what} row: {e}"),
            }
        }
        Ok(out)
    }

    /// Removes a layer version; false when there was none. Its number is not used again.
    pub fn delete_layer(&self, name: &str, version: u64) -> Result<bool, RegistryError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM layers WHERE name = ?1 AND version = ?2",
                params![name, version as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Creates or replaces an alias.
    pub fn put_alias(&self, alias: &Alias) -> Result<(), RegistryError> {
        let text = serde_json::to_string(alias)
            .map_err(|e| RegistryError::Encode(alias.name.clone(), e))?;
        self.conn()
            .execute(
                "INSERT INTO aliases(function, alias, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT(function, alias) DO UPDATE SET record = excluded.record",
                params![alias.function, alias.name, text],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Removes an alias; false when there was none.
    pub fn delete_alias(&self, function: &str, alias: &str) -> Result<bool, RegistryError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM aliases WHERE function = ?1 AND alias = ?2",
                [function, alias],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Every alias whose record decodes, by function and name.
    pub fn load_aliases(&self) -> Result<Vec<Alias>, RegistryError> {
        self.load(
            "SELECT alias, record FROM aliases ORDER BY function, alias",
            "alias",
        )
    }
}

/// An asynchronous invocation waiting in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEvent {
    /// The request id the caller was given.
    pub id: String,
    pub function: String,
    pub payload: Vec<u8>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub enqueued_at: u64,
    pub next_at: u64,
    /// Destination records in a row that led to it (0: invoked by a client).
    pub depth: u32,
}

impl Registry {
    /// Adds an event; it is durable when this returns.
    pub fn enqueue(&self, ev: &QueuedEvent) -> Result<(), RegistryError> {
        self.conn()
            .execute(
                "INSERT INTO events(id, function, payload, attempts, enqueued_at, next_at, depth)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    ev.id,
                    ev.function,
                    ev.payload,
                    ev.attempts,
                    ev.enqueued_at as i64,
                    ev.next_at as i64,
                    ev.depth
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Events due at `now` (oldest first), at most `limit`, leaving out `busy` ones.
    pub fn due_events(
        &self,
        now: u64,
        limit: usize,
        busy: &std::collections::HashSet<String>,
    ) -> Result<Vec<QueuedEvent>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, function, payload, attempts, enqueued_at, next_at, depth FROM events
                 WHERE next_at <= ?1 ORDER BY next_at LIMIT ?2",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![now as i64, (limit + busy.len()) as i64], |r| {
                Ok(QueuedEvent {
                    id: r.get(0)?,
                    function: r.get(1)?,
                    payload: r.get(2)?,
                    attempts: r.get(3)?,
                    enqueued_at: r.get::<_, i64>(4)?.max(0) as u64,
                    next_at: r.get::<_, i64>(5)?.max(0) as u64,
                    depth: r.get(6)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let ev = row.map_err(|e| self.sql(e))?;
            if !busy.contains(&ev.id) && out.len() < limit {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// When the next event not in `busy` is due, if any.
    pub fn next_due(
        &self,
        busy: &std::collections::HashSet<String>,
    ) -> Result<Option<u64>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, next_at FROM events ORDER BY next_at")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        while let Some(r) = rows.next().map_err(|e| self.sql(e))? {
            let id: String = r.get(0).map_err(|e| self.sql(e))?;
            if !busy.contains(&id) {
                let at: i64 = r.get(1).map_err(|e| self.sql(e))?;
                return Ok(Some(at.max(0) as u64));
            }
        }
        Ok(None)
    }

    pub fn reschedule(&self, id: &str, attempts: u32, next_at: u64) -> Result<(), RegistryError> {
        self.conn()
            .execute(
                "UPDATE events SET attempts = ?2, next_at = ?3 WHERE id = ?1",
                params![id, attempts, next_at as i64],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn remove_event(&self, id: &str) -> Result<(), RegistryError> {
        self.conn()
            .execute("DELETE FROM events WHERE id = ?1", [id])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Events waiting, per function.
    pub fn queued_events(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT function, COUNT(*) FROM events GROUP BY function")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
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
            opt_hash: None,
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
    fn versions_are_numbered_once_and_go_with_their_function() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("r.db")).unwrap();
        r.put(&rec("f_x", 1)).unwrap();
        // A name `LIKE` would match ('_' is its wildcard) must stay.
        r.put(&rec("fax", 1)).unwrap();
        r.put(&rec("fax:1", 1)).unwrap();
        let v = |n: u64| rec(&format!("f_x:{n}"), 1);
        assert_eq!(r.publish("f_x", v).unwrap().name, "f_x:1");
        assert_eq!(r.publish("f_x", v).unwrap().name, "f_x:2");
        let alias = Alias {
            function: "f_x".into(),
            name: "live".into(),
            version: "2".into(),
            description: String::new(),
            weights: Default::default(),
            revision: 1,
        };
        r.put_alias(&alias).unwrap();
        assert_eq!(r.load_aliases().unwrap(), vec![alias]);
        // One version goes; its number is not used again.
        assert!(r.delete("f_x:2").unwrap());
        assert_eq!(r.publish("f_x", v).unwrap().name, "f_x:3");
        assert!(r.delete("f_x").unwrap());
        let names: Vec<String> = r.load_all().unwrap().into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["fax", "fax:1"]);
        assert!(r.load_aliases().unwrap().is_empty());
        // Created again, the function counts from 1.
        assert_eq!(r.publish("f_x", v).unwrap().name, "f_x:1");
        assert!(r.delete_alias("f_x", "live").is_ok_and(|gone| !gone));
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

    #[test]
    fn queued_events_survive_reopening_and_come_due_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let ev = |id: &str, next_at| QueuedEvent {
            id: id.into(),
            function: "f".into(),
            payload: b"{}".to_vec(),
            attempts: 0,
            enqueued_at: 1,
            next_at,
            depth: 0,
        };
        {
            let r = Registry::open(&path).unwrap();
            r.enqueue(&ev("late", 50)).unwrap();
            r.enqueue(&ev("early", 10)).unwrap();
            assert!(r.enqueue(&ev("early", 10)).is_err(), "ids are unique");
        }
        let r = Registry::open(&path).unwrap();
        let none = std::collections::HashSet::new();
        let due = r.due_events(20, 10, &none).unwrap();
        assert_eq!(due, vec![ev("early", 10)]);
        assert_eq!(r.next_due(&none).unwrap(), Some(10));
        let busy: std::collections::HashSet<String> = ["early".to_string()].into();
        assert_eq!(r.next_due(&busy).unwrap(), Some(50));
        assert!(r.due_events(20, 10, &busy).unwrap().is_empty());
        r.reschedule("early", 1, 70).unwrap();
        assert_eq!(r.due_events(60, 10, &none).unwrap()[0].id, "late");
        r.remove_event("late").unwrap();
        assert_eq!(r.queued_events().unwrap(), vec![("f".to_string(), 1)]);
    }

    #[test]
    fn a_version_2_queue_gets_depths_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE functions(name TEXT PRIMARY KEY, version INTEGER NOT NULL,
                 record TEXT NOT NULL);
                 CREATE TABLE events(id TEXT PRIMARY KEY, function TEXT NOT NULL,
                 payload BLOB NOT NULL, attempts INTEGER NOT NULL,
                 enqueued_at INTEGER NOT NULL, next_at INTEGER NOT NULL);
                 INSERT INTO events VALUES ('old', 'f', x'7b7d', 1, 1, 1);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let r = Registry::open(&path).unwrap();
        let due = r.due_events(5, 10, &Default::default()).unwrap();
        assert_eq!((due[0].id.as_str(), due[0].depth), ("old", 0));
        assert!(r.load_aliases().unwrap().is_empty());
    }

    #[test]
    fn a_version_1_registry_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE functions(name TEXT PRIMARY KEY, version INTEGER NOT NULL,
                 record TEXT NOT NULL); PRAGMA user_version = 1;",
            )
            .unwrap();
            let text = serde_json::to_string(&rec("kept", 3)).unwrap();
            c.execute("INSERT INTO functions VALUES ('kept', 3, ?1)", [text])
                .unwrap();
        }
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.load_all().unwrap(), vec![rec("kept", 3)]);
        let ev = QueuedEvent {
            id: "e".into(),
            function: "kept".into(),
            payload: b"{}".to_vec(),
            attempts: 0,
            enqueued_at: 1,
            next_at: 1,
            depth: 0,
        };
        r.enqueue(&ev).unwrap();
        drop(r);
        // Opening again finds version 2 and keeps the queue.
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.queued_events().unwrap(), vec![("kept".to_string(), 1)]);
    }
}
