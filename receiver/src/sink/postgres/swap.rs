//! What a snapshot's swap keeps of the table it replaces: its GRANTs (re-issued on the new
//! table, from the old one's `relacl`) and its owner (where this role may give the table to
//! it); and how long it may wait for the readers of the old table (`lock_timeout`).

use postgres::Transaction;

use super::apply::{ApplyError, db_err};
use super::names::{QualName, quote_ident};

/// How long the swap waits for the lock on the old table before it gives up for now.
pub const LOCK_TIMEOUT: &str = "5s";

/// The privileges that may be granted on a table, as `aclexplode` names them.
const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// The old table's owner and grants.
pub struct Access {
    /// The owner, unless it is the role applying (nothing to give back then).
    owner: Option<String>,
    /// (grantee or PUBLIC, privilege, with grant option).
    grants: Vec<(Option<String>, String, bool)>,
}

/// Reads the owner and grants of relation `oid`.
pub fn access_of(tx: &mut Transaction<'_>, oid: u32) -> Result<Access, ApplyError> {
    let row = tx
        .query_one(
            "SELECT CASE WHEN relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) THEN NULL ELSE pg_get_userbyid(relowner)::text END FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .map_err(db_err)?;
    let grants = tx
        .query(
            "SELECT r.rolname::text, a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE c.oid = $1",
            &[&oid],
        )
        .map_err(db_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(Access {
        owner: row.get(0),
        grants,
    })
}

/// Gives `target` (the new table, in place now) the old table's grants, then its owner. A
/// grant or owner this role may not give is a WARN: the swap goes on.
pub fn restore(tx: &mut Transaction<'_>, target: &QualName, a: &Access) -> Result<(), ApplyError> {
    for (grantee, privilege, grantable) in &a.grants {
        if !PRIVILEGES.contains(&privilege.as_str()) {
            continue;
        }
        let to = grantee.as_deref().map_or("PUBLIC".to_owned(), quote_ident);
        let option = if *grantable { " WITH GRANT OPTION" } else { "" };
        let sql = format!("GRANT {privilege} ON {} TO {to}{option}", target.sql());
        try_in_savepoint(
            tx,
            &sql,
            target,
            "cannot give back a grant of the replaced table",
        )?;
    }
    if let Some(owner) = &a.owner {
        let sql = format!(
            "ALTER TABLE {} OWNER TO {}",
            target.sql(),
            quote_ident(owner)
        );
        try_in_savepoint(
            tx,
            &sql,
            target,
            "cannot give the table back to its owner (this role must be a member of the owner's role); the receiver's role owns it now",
        )?;
    }
    Ok(())
}

fn try_in_savepoint(
    tx: &mut Transaction<'_>,
    sql: &str,
    target: &QualName,
    what: &str,
) -> Result<(), ApplyError> {
    let mut sp = tx.savepoint("gapsync_access").map_err(db_err)?;
    match sp.execute(sql, &[]) {
        Ok(_) => sp.commit().map_err(db_err),
        Err(e) => {
            tracing::warn!(table = %target, statement = %sql, error = %super::db::describe(&e), "{what}");
            sp.rollback().map_err(db_err)
        }
    }
}

/// Sets the lock timeout of this transaction.
pub fn limit_lock_wait(tx: &mut Transaction<'_>) -> Result<(), ApplyError> {
    tx.execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"), &[])
        .map(|_| ())
        .map_err(db_err)
}

/// Runs `sql`, which locks `table` (relation `oid`) exclusively: when the lock is not had
/// within the lock timeout, says which sessions hold the table and returns a local error
/// (the object is applied again at the next retry).
pub fn exec_locking(
    tx: &mut Transaction<'_>,
    sql: &str,
    table: &QualName,
    oid: u32,
) -> Result<(), ApplyError> {
    // Who holds the table now: said only when the wait fails.
    let holders: Vec<i32> = tx
        .query(
            "SELECT DISTINCT pid FROM pg_locks WHERE relation = $1 AND granted AND pid <> pg_backend_pid() ORDER BY pid",
            &[&oid],
        )
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    match tx.execute(sql, &[]) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            let pids = format!("{holders:?}");
            tracing::warn!(table = %table, blocking_pids = %pids, lock_timeout = LOCK_TIMEOUT, "a session holds the table, so it cannot be replaced now; the object is applied again at the next retry");
            Err(ApplyError::Database(format!(
                "table {table}: not replaced: sessions {pids} held it for longer than lock_timeout = {LOCK_TIMEOUT} (readers are not kept waiting behind the swap); applied again at the next retry"
            )))
        }
        Err(e) => Err(db_err(e)),
    }
}
