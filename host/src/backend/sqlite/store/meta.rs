//! The `meta` table, typed: each row a [`Meta`] name, read and written
//! only through these functions (statements in `sql.rs`).
//!
//! | row            | value                                                      |
//! |----------------|------------------------------------------------------------|
//! | `schema`       | the schema version (`schema::SCHEMA_VERSION`)              |
//! | `counter`      | the last committed commit counter                          |
//! | `shipped`      | the last commit confirmed in the backup                    |
//! | `db_id`        | identity of this database's history (kept across restores) |
//! | `writer`       | identity of this file as a backup writer (new after every restore) |
//! | `epoch`        | the versionstamp epoch reserved in S3 (absent: none)       |
//! | `pruned_below` | the change log holds no commit below this one              |

use rusqlite::{Connection, OptionalExtension, ToSql};

use super::StoreError;
use super::sql;

/// A row of the `meta` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta {
    Schema,
    Counter,
    Shipped,
    DbId,
    Writer,
    Epoch,
    PrunedBelow,
}

impl Meta {
    pub const fn name(self) -> &'static str {
        match self {
            Meta::Schema => "schema",
            Meta::Counter => "counter",
            Meta::Shipped => "shipped",
            Meta::DbId => "db_id",
            Meta::Writer => "writer",
            Meta::Epoch => "epoch",
            Meta::PrunedBelow => "pruned_below",
        }
    }
}

/// An integer row (`None`: absent).
pub fn get(conn: &Connection, m: Meta) -> Result<Option<u64>, StoreError> {
    Ok(conn.prepare_cached(sql::META_GET)?.query_row([m.name()], |r| r.get::<_, i64>(0)).optional()?.map(|v| v as u64))
}

/// A text row (`db_id`).
pub fn get_text(conn: &Connection, m: Meta) -> Result<Option<String>, StoreError> {
    Ok(conn.prepare_cached(sql::META_GET)?.query_row([m.name()], |r| r.get::<_, String>(0)).optional()?)
}

pub fn set(conn: &Connection, m: Meta, v: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(sql::META_SET)?.execute(rusqlite::params![m.name(), v as i64]).map(drop)
}

/// Set a position that only moves forward: the larger of the row and `v`.
pub fn raise(conn: &Connection, m: Meta, v: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(sql::META_RAISE)?.execute(rusqlite::params![m.name(), v as i64]).map(drop)
}

/// Set the row unless it exists (a new file's identities).
pub fn init(conn: &Connection, m: Meta, v: &dyn ToSql) -> rusqlite::Result<()> {
    conn.prepare_cached(sql::META_INIT)?.execute(rusqlite::params![m.name(), v]).map(drop)
}

pub fn remove(conn: &Connection, m: Meta) -> rusqlite::Result<()> {
    conn.prepare_cached(sql::META_REMOVE)?.execute([m.name()]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_typed_and_raise_never_lowers() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql::SCHEMA).unwrap();
        assert_eq!(get(&c, Meta::Epoch).unwrap(), None);
        init(&c, Meta::Counter, &7i64).unwrap();
        init(&c, Meta::Counter, &9i64).unwrap();
        assert_eq!(get(&c, Meta::Counter).unwrap(), Some(7), "init never overwrites");
        set(&c, Meta::Counter, 3).unwrap();
        assert_eq!(get(&c, Meta::Counter).unwrap(), Some(3));
        raise(&c, Meta::PrunedBelow, 10).unwrap();
        raise(&c, Meta::PrunedBelow, 4).unwrap();
        assert_eq!(get(&c, Meta::PrunedBelow).unwrap(), Some(10), "raise never lowers");
        init(&c, Meta::DbId, &"00ab").unwrap();
        assert_eq!(get_text(&c, Meta::DbId).unwrap().as_deref(), Some("00ab"));
        remove(&c, Meta::Counter).unwrap();
        assert_eq!(get(&c, Meta::Counter).unwrap(), None);
    }
}
