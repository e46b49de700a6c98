//! The socket server's own refusals, over a real Unix socket in a temporary directory
//! served in-process: an oversized body (413) and an If-Match header that is not text.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{server, test_context::context};

/// Sends `head` (the request line and headers, without the blank line) and `body` on a new
/// connection, and returns everything the server answers until it closes.
async fn exchange(socket: &std::path::Path, head: &[u8], body: Vec<u8>) -> String {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut request = head.to_vec();
    request.extend_from_slice(
        format!(
            "\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The server may answer and close before it has read all of the body.
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        let _ = writer.write_all(&body).await;
    });
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    sending.abort();
    String::from_utf8_lossy(&reply).into_owned()
}

fn status_and_body(reply: &str) -> (&str, &str) {
    let status = reply.split("\r\n").next().unwrap_or_default();
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body)
}

#[tokio::test]
async fn the_server_refuses_oversized_bodies_and_binary_if_match() {
    let ctx = context();
    let listener = server::bind(&ctx.shared.config).await.unwrap();
    let serving = tokio::spawn(server::serve(listener, ctx.shared.clone()));
    let socket = &ctx.shared.config.control_socket;
    let before = std::fs::read(ctx.shared.config.policies_path()).unwrap();

    // 33 MiB is over the 32 MiB limit.
    let mut huge = vec![b' '; 33 * 1024 * 1024];
    huge.extend_from_slice(super::test_context::POLICIES.as_bytes());
    let head = b"PUT /v1/policies HTTP/1.1\r\nHost: sshgw\r\nContent-Type: application/json";
    let reply = exchange(socket, head, huge).await;
    assert_eq!(
        status_and_body(&reply),
        (
            "HTTP/1.1 413 Payload Too Large",
            "{\n  \"error\": \"request body exceeds 32 MiB\"\n}\n"
        ),
        "{reply}"
    );

    let head = b"DELETE /v1/devices/laptop-jdoe HTTP/1.1\r\nHost: sshgw\r\nIf-Match: \"\xff\"";
    let reply = exchange(socket, head, Vec::new()).await;
    assert_eq!(
        status_and_body(&reply),
        (
            "HTTP/1.1 400 Bad Request",
            "{\n  \"error\": \"If-Match: not a visible ASCII header value\"\n}\n"
        ),
        "{reply}"
    );
    let after = std::fs::read(ctx.shared.config.policies_path()).unwrap();
    assert_eq!(after, before);
    assert!(ctx.shared.state.snapshot().devices.devices.len() == 1);
    serving.abort();
}
