//! Finishing a prepared (two-phase) transaction from a control connection, as the role that
//! prepared it.

use tokio_postgres::Client;

/// What to do when the control role may not act as a transaction's owner.
pub const OWNER_HINT: &str = "the control role (the shard URLs' login) must be a member of \
    the role that prepared it: GRANT <that role> TO <control role> (see config/roles.sql)";

/// Runs `sql`, a `COMMIT PREPARED` or `ROLLBACK PREPARED` of `gid`, on control connection
/// `c`. Postgres lets only the role that prepared a transaction (or a superuser) finish it;
/// clients' transactions are prepared by their users' `shard_user` roles, so when the
/// owner is another role the control role acts as it for this one statement (`SET ROLE`:
/// the control role must be a member of the application roles, as the quickstart grants).
pub async fn finish_as_owner(
    c: &Client,
    gid: &str,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    let owner = c
        .query_opt(
            "SELECT owner::text FROM pg_prepared_xacts WHERE gid = $1 \
             AND database = current_database() AND owner <> current_user",
            &[&gid],
        )
        .await?;
    let Some(owner) = owner else {
        return c.batch_execute(sql).await;
    };
    let owner: String = owner.try_get(0)?;
    c.batch_execute(&format!("SET ROLE {}", crate::quote::ident(&owner)))
        .await?;
    let r = c.batch_execute(sql).await;
    let reset = c.batch_execute("RESET ROLE").await;
    r.and(reset)
}
