//! A deliberately small HTTP/1.1 client: it shows exactly what went over the
//! wire (status line, every header, chunked or not, a truncated body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Send the body with chunked transfer coding, in pieces of this size.
    pub chunked: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended before its framing said it would (chunked without the
    /// last chunk, fewer bytes than Content-Length).
    pub truncated: bool,
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request { method: method.into(), path: path.into(), headers: Vec::new(), body: None, chunked: None }
    }
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }
    pub fn post(path: &str, body: &[u8]) -> Request {
        Request::new("POST", path).body(body)
    }
    pub fn header(mut self, k: &str, v: &str) -> Request {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn body(mut self, b: &[u8]) -> Request {
        self.body = Some(b.to_vec());
        self
    }
    pub fn chunked(mut self, piece: usize) -> Request {
        self.chunked = Some(piece);
        self
    }

    pub fn to_bytes(&self, port: u16) -> Vec<u8> {
        let mut out =
            format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut bytes;
        match (&self.body, self.chunked) {
            (Some(b), Some(piece)) => {
                out.push_str("Transfer-Encoding: chunked\r\n\r\n");
                bytes = out.into_bytes();
                for c in b.chunks(piece.max(1)) {
                    bytes.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    bytes.extend_from_slice(c);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
            (Some(b), None) => {
                out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                bytes = out.into_bytes();
                bytes.extend_from_slice(b);
            }
            (None, _) => {
                out.push_str("\r\n");
                bytes = out.into_bytes();
            }
        }
        bytes
    }

    pub fn send(&self, port: u16) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&self.to_bytes(port)).expect("send request");
        read_response(&mut BufReader::new(s), self.method == "HEAD")
    }
}

fn read_line(r: &mut impl BufRead) -> Option<String> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(l.trim_end_matches(['\r', '\n']).to_string()),
    }
}

pub fn read_response(r: &mut impl BufRead, head: bool) -> Response {
    let mut resp = Response::default();
    let status_line = read_line(r).expect("no status line: connection closed");
    let mut parts = status_line.splitn(3, ' ');
    let _proto = parts.next();
    resp.status = parts.next().and_then(|s| s.parse().ok()).expect("bad status line");
    resp.reason = parts.next().unwrap_or("").to_string();
    while let Some(l) = read_line(r) {
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            resp.headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if head || resp.status == 304 || resp.status == 204 {
        return resp;
    }
    if resp.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        resp.chunked = true;
        loop {
            let Some(size_line) = read_line(r) else {
                resp.truncated = true;
                break;
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap_or(usize::MAX);
            if size == usize::MAX {
                resp.truncated = true;
                break;
            }
            if size == 0 {
                // Trailers, then the final empty line.
                while let Some(l) = read_line(r) {
                    if l.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut buf = vec![0; size];
            if r.read_exact(&mut buf).is_err() {
                resp.truncated = true;
                break;
            }
            resp.body.extend_from_slice(&buf);
            let mut crlf = [0u8; 2];
            if r.read_exact(&mut crlf).is_err() {
                resp.truncated = true;
                break;
            }
        }
    } else if let Some(len) = resp.header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        let mut buf = Vec::with_capacity(len);
        let got = r.take(len as u64).read_to_end(&mut buf).unwrap_or(0);
        resp.truncated = got < len;
        resp.body = buf;
    } else {
        let _ = r.read_to_end(&mut resp.body);
    }
    resp
}
