//! A small blocking HTTP/1.1 client for `kiln bench serve` (and the tests): one request per
//! connection, JSON in, the body or its server-sent events out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status, and the body (chunked transfer decoded).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

/// Sends `method path` with `body` (and the headers given) and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut reader = send(addr, method, path, headers, body)?;
    let (status, content_type, chunked) = read_head(&mut reader)?;
    let mut body = Vec::new();
    match chunked {
        true => {
            while let Some(chunk) = read_chunk(&mut reader)? {
                body.extend(chunk);
            }
        }
        false => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response { status, content_type, body })
}

/// POSTs JSON and calls `on_data` with each server-sent event's data as it arrives; returns
/// the status (and the body, when it is not a stream).
pub fn stream(
    addr: SocketAddr,
    path: &str,
    json: &serde_json::Value,
    mut on_data: impl FnMut(&str),
) -> std::io::Result<Response> {
    let body = json.to_string();
    let headers = [("Content-Type", "application/json")];
    let mut reader = send(addr, "POST", path, &headers, body.as_bytes())?;
    let (status, content_type, chunked) = read_head(&mut reader)?;
    if !content_type.starts_with("text/event-stream") || !chunked {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        return Ok(Response { status, content_type, body });
    }
    let mut pending = String::new();
    while let Some(chunk) = read_chunk(&mut reader)? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            sse_data(&event).iter().for_each(|d| on_data(d));
        }
    }
    Ok(Response { status, content_type, body: Vec::new() })
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) before reading all of an oversized body and close.
    let _ = stream.write_all(body);
    Ok(BufReader::new(stream))
}

/// The status line and headers: (status, content type, chunked).
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, String, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("status line {line:?}"))
    })?;
    let (mut content_type, mut chunked) = (String::new(), false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok((status, content_type, chunked));
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        match name.as_str() {
            "content-type" => content_type = value,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
}

/// One chunk of a chunked body; `None` after the last.
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "chunk size"))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

fn sse_data(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim().to_string()).collect()
}
