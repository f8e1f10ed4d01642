-- The PostgreSQL side of the worker's state store (components/statestore-postgresql.yaml,
-- Dapr's state.postgresql v2): a database, a login role, and a schema that role owns.
-- PostgreSQL 13 or later (the table Dapr creates uses the built-in gen_random_uuid()).
--
-- Run once, with psql, as a role that may create roles and databases:
--
--   psql "host=postgres.db.svc user=postgres dbname=postgres sslmode=require" \
--     -v password="$(openssl rand -hex 24)" -f deploy/sql/reminder-worker.sql
--
-- and put the same password into the Secret reminder-worker-postgres
-- (docs/deployment.md): connectionString "host=... user=reminder_worker password=...
-- database=reminders sslmode=require".
--
-- The tables: Dapr creates them itself when the sidecar first loads the component,
-- in the first schema of the role's search_path (set below to `reminder_worker`):
--   state          key text PRIMARY KEY, value bytea, etag uuid, created_at,
--                  updated_at, expires_at (+ an index on expires_at). Its name is
--                  the component's `tablePrefix` (unset: "") followed by "state".
--   dapr_metadata  key/value rows: the schema version of `state`, a lock row for
--                  that migration, the time of the last TTL cleanup. Its name is the
--                  component's `metadataTableName` (unset: dapr_metadata).
-- The sidecar runs `CREATE TABLE IF NOT EXISTS dapr_metadata` at every start, so the
-- role keeps CREATE on its schema even once both tables exist. If you set
-- tablePrefix or metadataTableName in the component, the tables go where they say.

\set ON_ERROR_STOP on
\if :{?password}
\else
  \echo 'usage: psql ... -v password=<the password of reminder_worker> -f deploy/sql/reminder-worker.sql'
  DO $$ BEGIN RAISE EXCEPTION 'no password given (psql -v password=...)'; END $$;
\endif

-- The worker's login: no superuser, no CREATEDB, no CREATEROLE, no replication.
CREATE ROLE reminder_worker LOGIN PASSWORD :'password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;

-- A database of its own, owned by the role running this script, not by the worker.
CREATE DATABASE reminders ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE reminders FROM PUBLIC;
GRANT CONNECT ON DATABASE reminders TO reminder_worker;

\connect reminders

-- Nobody creates objects in `public` (the default since PostgreSQL 15; explicit for
-- older servers). The worker's tables live in a schema it owns.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA reminder_worker AUTHORIZATION reminder_worker;
ALTER ROLE reminder_worker IN DATABASE reminders SET search_path = reminder_worker;
