CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    username   varchar(255) UNIQUE NOT NULL,
    email      varchar(255) UNIQUE NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id       bigint PRIMARY KEY,
    user_id  bigint NOT NULL REFERENCES users (id),
    balance  bigint NOT NULL DEFAULT 0,
    filler   text
);
