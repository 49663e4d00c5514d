-- Secrets a deployment generates for itself when none is configured (the JWT signing secret). Kept in the
-- database every process of the deployment shares, so tokens one API process issues are accepted by the others
-- and survive restarts. Written once (first writer wins), never updated.
CREATE TABLE deployment_secrets (
  name text PRIMARY KEY,
  value text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- Only the service's own role needs it; nothing in the log, the bus or the exports refers to it.
REVOKE ALL ON deployment_secrets FROM PUBLIC;
