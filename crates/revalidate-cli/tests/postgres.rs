//! The sample users API on a real PostgreSQL server.

mod support;

use support::{Api, postgres::fresh_database, scenarios};

#[tokio::test]
async fn crud_flow_and_collection_etag() {
    let api = Api::connect(&fresh_database().await).await;
    scenarios::crud_flow(&api).await;
    scenarios::collection_etag(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_puts_one_winner() {
    let api = Api::connect(&fresh_database().await).await;
    scenarios::concurrent_puts(&api).await;
    scenarios::concurrent_store_updates(&api).await;
}
