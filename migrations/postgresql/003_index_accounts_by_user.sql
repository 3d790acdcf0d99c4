-- switchyard:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_user_id_idx ON accounts (user_id);
