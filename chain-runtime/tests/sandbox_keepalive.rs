//! Every emulator speaks HTTP/1.1 with keep-alive: on one TCP connection, responses that
//! come before the request body was read (no such route, method not allowed, a refused token
//! request, an unauthenticated API call) leave the connection usable, and the next request on
//! it is answered as itself.

use std::time::Duration;

use chain_runtime::sandbox::{Github, Google, Jira, Microsoft, Salesforce, Slack, Urls};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One response read off the connection: status, lower-case headers, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("not a status line: {line:?}"))
        .parse()
        .unwrap();
    assert!(line.starts_with("HTTP/1.1 "), "{line:?}");
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await.unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = reply.header("content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        reader.read_exact(&mut body).await.unwrap();
        reply.body = body;
    } else if reply.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            reply.body.extend_from_slice(&chunk[..size]);
        }
    }
    reply
}

fn request(method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: sandbox\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    u.path().to_owned()
}

/// Which statuses a request of the sequence may get.
type Expect = fn(u16) -> bool;

/// Sends the early-error requests and a last one on one connection; every reply must parse,
/// none may announce `connection: close`, and the last must be answered as itself.
async fn keep_alive(urls: &Urls, who_am_i: (&str, &str)) {
    let addr = urls.base.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&addr).await.unwrap();
    let mut reader = BufReader::new(stream);
    let form = "grant_type=refresh_token&refresh_token=nope&client_id=x&client_secret=y";
    let json = r#"{"padding":"0123456789012345678901234567890123456789012345678901234567890123"}"#;
    let big = format!(r#"{{"padding":"{}"}}"#, "x".repeat(256 * 1024));
    let token = path_of(&urls.token);
    let (method, who) = who_am_i;
    let steps: Vec<(Vec<u8>, Expect)> = vec![
        (
            request(
                "POST",
                "/no/such/route",
                &[("Content-Type", "application/json")],
                json,
            ),
            |s| s == 404,
        ),
        (
            request(
                "POST",
                "/no/such/route",
                &[("Content-Type", "application/json")],
                &big,
            ),
            |s| s == 404,
        ),
        (
            request(
                "PUT",
                &token,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                form,
            ),
            |s| s == 405,
        ),
        (
            request(
                "POST",
                &token,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                form,
            ),
            |s| (200..500).contains(&s),
        ),
        (
            request(
                method,
                &path_of(who),
                &[
                    ("Authorization", "Bearer nope"),
                    ("Content-Type", "application/json"),
                ],
                json,
            ),
            |s| matches!(s, 200 | 401),
        ),
        (
            request(
                "POST",
                "/no/such/route",
                &[("Content-Type", "application/json")],
                json,
            ),
            |s| s == 404,
        ),
    ];
    for (i, (bytes, expected)) in steps.into_iter().enumerate() {
        reader.get_mut().write_all(&bytes).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), read_reply(&mut reader))
            .await
            .unwrap_or_else(|_| panic!("request {i}: no reply within 10 s"));
        assert!(
            expected(reply.status),
            "request {i} to {}: HTTP {} {}",
            urls.base,
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        assert_ne!(
            reply.header("connection"),
            Some("close"),
            "request {i}: the connection must stay open"
        );
    }
}

#[tokio::test]
async fn salesforce_keeps_the_connection() {
    let e = Salesforce::start().await.unwrap();
    let who = format!(
        "{}/sobjects/Opportunity/006000000000001AAA",
        e.urls().api_base
    );
    keep_alive(e.urls(), ("GET", &who)).await;
}

#[tokio::test]
async fn jira_keeps_the_connection() {
    let e = Jira::start().await.unwrap();
    keep_alive(e.urls(), ("GET", e.urls().userinfo.as_deref().unwrap())).await;
}

#[tokio::test]
async fn slack_keeps_the_connection() {
    let e = Slack::start().await.unwrap();
    keep_alive(e.urls(), ("POST", e.urls().userinfo.as_deref().unwrap())).await;
}

#[tokio::test]
async fn github_keeps_the_connection() {
    let e = Github::start().await.unwrap();
    keep_alive(e.urls(), ("GET", e.urls().userinfo.as_deref().unwrap())).await;
}

#[tokio::test]
async fn google_keeps_the_connection() {
    let e = Google::start().await.unwrap();
    keep_alive(e.urls(), ("GET", e.urls().userinfo.as_deref().unwrap())).await;
}

#[tokio::test]
async fn microsoft_keeps_the_connection() {
    let e = Microsoft::start().await.unwrap();
    keep_alive(e.urls(), ("GET", e.urls().userinfo.as_deref().unwrap())).await;
}
