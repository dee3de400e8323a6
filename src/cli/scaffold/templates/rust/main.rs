//! Runs the receiver: the secret from `HERALD_WEBHOOK_SECRET`, the address from `HOST` and
//! `PORT` (127.0.0.1:3000 unless set).

#[tokio::main]
async fn main() {
    let Ok(secret) = std::env::var("HERALD_WEBHOOK_SECRET") else {
        eprintln!(
            "HERALD_WEBHOOK_SECRET is not set: use the stream's secret (`herald streams secret STREAM -q`)"
        );
        std::process::exit(1);
    };
    let router = receiver::router(&secret).unwrap_or_else(|e| {
        eprintln!("HERALD_WEBHOOK_SECRET is not a `whsec_` secret: {e}");
        std::process::exit(1);
    });
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port: u16 = std::env::var("PORT")
        .map_or(Ok(3000), |p| p.parse())
        .unwrap_or_else(|e| {
            eprintln!("PORT is not a port number: {e}");
            std::process::exit(1);
        });
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        });
    println!(
        "listening on http://{}",
        listener.local_addr().expect("a bound address")
    );
    axum::serve(listener, router)
        .await
        .expect("the server runs");
}
