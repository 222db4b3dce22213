//! The HTTP/JSON API (placeholder until it is built: accepts and closes connections).

use crate::node::NodeHandle;
use crate::server::ServerInfo;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves HTTP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    info: Arc<ServerInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = (node, info);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            conn = listener.accept() => drop(conn),
        }
    }
}
