-- switchyard:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS accounts_user_id_idx;
