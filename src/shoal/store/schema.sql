-- shoal control server schema (SQLite dialect; a PostgreSQL backend keeps the same tables).
-- Times are UTC ISO-8601 text with microseconds ("2026-01-02T03:04:05.000000Z") so that they
-- compare correctly as text.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The global revision: bumped by every change other nodes must see.
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', '0');
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '6');

CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,          -- first 12 hex of sha256(secret)
    secret_hash TEXT NOT NULL UNIQUE,      -- sha256(secret) hex; the secret is never stored
    reusable    INTEGER NOT NULL,
    tags        TEXT NOT NULL,             -- JSON list
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    used_at     TEXT,
    used_by     TEXT,                      -- node id of the first registration it authorised
    revoked_at  TEXT,
    max_uses    INTEGER,                   -- registrations it may authorise; NULL: unlimited
    uses        INTEGER NOT NULL DEFAULT 0,
    ephemeral   INTEGER NOT NULL DEFAULT 0, -- its nodes are removed once offline long enough
    scope       TEXT                       -- NULL: a join token; 'read' | 'admin': admin token
);

CREATE TABLE IF NOT EXISTS nodes (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    public_key      TEXT NOT NULL UNIQUE,  -- base64, as `wg` prints it
    mesh_ip         TEXT NOT NULL UNIQUE,
    subnet          TEXT UNIQUE,           -- NULL: a host without Docker (schema 6)
    endpoints       TEXT NOT NULL,         -- JSON list of {"host", "port"}
    tags            TEXT NOT NULL,         -- JSON list, from the join token
    created_at      TEXT NOT NULL,
    last_seen       TEXT,
    updated_rev     INTEGER NOT NULL,
    online          INTEGER NOT NULL DEFAULT 1, -- 0: containers withdrawn (missed heartbeats)
    ephemeral       INTEGER NOT NULL DEFAULT 0, -- removed once offline for the timeout
    next_key        TEXT,                  -- a key rotation in progress: the next key ...
    switch_at       TEXT                   -- ... and when the node switches to it
);
CREATE INDEX IF NOT EXISTS nodes_updated_rev ON nodes (updated_rev);

CREATE TABLE IF NOT EXISTS tombstones (
    node_id     TEXT PRIMARY KEY,
    removed_rev INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_removed_rev ON tombstones (removed_rev);

-- Containers on each host's `shoal` network, as its agent last reported them (schema 2).
-- Keyed by (node_id, id) since schema 4: a host reporting another host's container id gets a
-- row of its own and never takes over the other host's.
CREATE TABLE IF NOT EXISTS containers (
    node_id     TEXT NOT NULL,                 -- deleted with its node (by the store)
    id          TEXT NOT NULL,                 -- Docker's full container id
    name        TEXT NOT NULL,
    ip          TEXT NOT NULL,
    project     TEXT,
    service     TEXT,
    ports       TEXT NOT NULL,                 -- JSON list of {"port", "protocol"}
    health      TEXT NOT NULL,
    updated_rev INTEGER NOT NULL,              -- also bumped when its node goes on/offline
    labels      TEXT NOT NULL DEFAULT '[]',    -- JSON list of [key, value], shoal.* only (schema 5)
    PRIMARY KEY (node_id, id)
);

CREATE TABLE IF NOT EXISTS container_tombstones (
    node_id      TEXT NOT NULL,
    container_id TEXT NOT NULL,
    removed_rev  INTEGER NOT NULL,
    PRIMARY KEY (node_id, container_id)
);
CREATE INDEX IF NOT EXISTS container_tombstones_removed_rev
    ON container_tombstones (removed_rev);

-- Keys of nodes the operator removed: they may not join again (schema 3).
CREATE TABLE IF NOT EXISTS revoked_keys (
    public_key TEXT PRIMARY KEY
);

-- Addresses of removed nodes, quarantined before anyone else gets them (schema 3).
CREATE TABLE IF NOT EXISTS released (
    node_id     TEXT PRIMARY KEY,
    mesh_ip     TEXT NOT NULL,
    subnet      TEXT,                          -- NULL: a host without Docker (schema 6)
    released_at TEXT NOT NULL
);

-- Access-control policies as set, the newest one in force (schema 5).
CREATE TABLE IF NOT EXISTS policies (
    revision    INTEGER PRIMARY KEY,           -- the policy's own number, 1, 2, ...
    file        TEXT NOT NULL,
    source      TEXT NOT NULL,
    set_at      TEXT NOT NULL,
    updated_rev INTEGER NOT NULL               -- the global revision it reached the maps at
);

-- Subnet routes nodes advertise and the admin's decision on each (schema 6). Written with
-- their node (`save_node` replaces a node's rows), deleted with it.
CREATE TABLE IF NOT EXISTS routes (
    node_id       TEXT NOT NULL,
    prefix        TEXT NOT NULL,               -- "192.168.7.0/24"
    status        TEXT NOT NULL,               -- 'pending' | 'approved' | 'rejected'
    advertised_at TEXT NOT NULL,
    decided_at    TEXT,                        -- when the admin approved or rejected it
    PRIMARY KEY (node_id, prefix)
);
