//! Development helper: serve a shard map (same as `shardwire serve`).
fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let path = std::env::args().nth(1).expect("usage: devserve CONFIG");
    let map = shardwire::shardmap::ShardMap::load(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()
        .unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(&map.listen).await.unwrap();
        let _h = shardwire::server::start(map, l).await.unwrap();
        tokio::signal::ctrl_c().await.unwrap();
    });
}
