-- Least-privilege roles for shardwire. Run as a superuser in each shard's database
-- (idempotent); `shardwire quickstart`, docker/compose.yaml and the tests run it.
--
--   shardwire_control  the control plane: the login in the shard map's shard URLs. It
--                      creates and owns schema `shardwire` (the 2PC decision log, the key
--                      directory, the rebalance's state, the id allocator), which no other
--                      role can read, write or lock. It is a member of app_rw so that it
--                      can move app_rw's rows (rebalance) and finish the two-phase
--                      transactions app_rw prepared (recovery).
--   app_rw             the application: the shard role clients run as (`shard_user` of
--                      the map's users). It owns the database and the application's
--                      tables, and has no rights in schema `shardwire`.
--
-- Neither is a superuser: a client cannot run `COPY ... TO PROGRAM`, read server files or
-- change the proxy's control state. Change both passwords, here and in the map, before
-- real use.
DO $roles$
BEGIN
  BEGIN
    CREATE ROLE shardwire_control LOGIN PASSWORD 'control-secret';
  EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
  END;
  BEGIN
    CREATE ROLE app_rw LOGIN PASSWORD 'app-rw-secret';
  EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
  END;
  IF NOT pg_has_role('shardwire_control', 'app_rw', 'MEMBER') THEN
    BEGIN
      GRANT app_rw TO shardwire_control;
    EXCEPTION WHEN unique_violation THEN NULL;
    END;
  END IF;
  EXECUTE format('ALTER DATABASE %I OWNER TO app_rw', current_database());
  EXECUTE format('GRANT CREATE ON DATABASE %I TO shardwire_control', current_database());
END
$roles$;
