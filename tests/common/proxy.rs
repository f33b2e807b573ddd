//! A fault-injecting HTTP proxy between sidekv and the S3 server: per
//! request it passes, answers an S3 error, delays, resets the connection, or
//! forwards the request and drops the response (`Fault`), and counts what it
//! did (`ProxyStats`). The S3 fault tests (tests/faults.rs) drive it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to each request while set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Answer with this status (S3-style XML error), without forwarding.
    Status(u16),
    /// Forward, then hold moto's response this long before answering.
    Delay(Duration),
    /// Read the request, then reset the connection (RST) without forwarding.
    Reset,
    /// PUTs: forward, read moto's (successful) response, then close the
    /// client connection without answering. Other requests pass.
    LoseResponse,
    /// Each request: with this probability (percent) one of the faults above
    /// picked at random, else forwarded.
    Mixed(u32),
}

#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    pub requests: u64,
    pub forwarded: u64,
    pub status_injected: u64,
    pub delayed: u64,
    pub resets: u64,
    pub lost_responses: u64,
    pub puts: u64,
}

impl ProxyStats {
    pub fn faults(&self) -> u64 {
        self.status_injected + self.delayed + self.resets + self.lost_responses
    }
}

struct ProxyShared {
    fault: Fault,
    stats: ProxyStats,
}

pub struct Proxy {
    /// `http://127.0.0.1:PORT`: point AWS_ENDPOINT_URL here.
    pub url: String,
    shared: Arc<Mutex<ProxyShared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 message read off a connection.
struct Msg {
    raw: Vec<u8>,
    method: String,
    status: u16,
    close: bool,
}

/// A connection with a read buffer, for reading whole HTTP/1.1 messages.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        Conn { s, buf: Vec::new() }
    }

    /// Read more bytes; Ok(false) at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.s.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn ensure(&mut self, n: usize) -> std::io::Result<()> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Position of `pat` at or after `from`, reading as needed.
    async fn find(&mut self, from: usize, pat: &[u8]) -> std::io::Result<usize> {
        loop {
            if let Some(i) = self.buf.get(from..).and_then(|b| b.windows(pat.len()).position(|w| w == pat)) {
                return Ok(from + i);
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One request (`request_method` None) or response; Ok(None) on a clean
    /// EOF before any byte of a request.
    async fn read_msg(&mut self, request_method: Option<&str>) -> std::io::Result<Option<Msg>> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        let head_end = self.find(0, b"\r\n\r\n").await? + 4;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or("").to_string();
        let mut content_length = None;
        let mut chunked = false;
        let mut close = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => content_length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "connection" => close = v.contains("close"),
                    _ => {}
                }
            }
        }
        let (method, status) = match request_method {
            None => (start.split(' ').next().unwrap_or("").to_string(), 0),
            Some(m) => (m.to_string(), start.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)),
        };
        let no_body = request_method.is_some() && (method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304);
        let end = if no_body {
            head_end
        } else if chunked {
            let mut pos = head_end;
            loop {
                let eol = self.find(pos, b"\r\n").await?;
                let line = String::from_utf8_lossy(&self.buf[pos..eol]).to_string();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
                pos = eol + 2;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let eol = self.find(pos, b"\r\n").await?;
                        let empty = eol == pos;
                        pos = eol + 2;
                        if empty {
                            break;
                        }
                    }
                    break pos;
                }
                self.ensure(pos + size + 2).await?;
                pos += size + 2;
            }
        } else if let Some(n) = content_length {
            self.ensure(head_end + n).await?;
            head_end + n
        } else if request_method.is_some() {
            // A response without framing: up to EOF.
            while self.fill().await? {}
            close = true;
            self.buf.len()
        } else {
            head_end
        };
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        Ok(Some(Msg { raw, method, status, close }))
    }
}

/// Close with RST instead of FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// Forward one request to moto on a fresh connection; moto's raw response.
async fn forward(upstream: SocketAddr, req: &Msg) -> std::io::Result<(Vec<u8>, bool)> {
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&req.raw).await?;
    let mut c = Conn::new(up);
    let mut out = Vec::new();
    loop {
        let m = c.read_msg(Some(&req.method)).await?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        out.extend_from_slice(&m.raw);
        if !(100..200).contains(&m.status) {
            return Ok((out, m.close));
        }
    }
}

fn error_xml(status: u16) -> Vec<u8> {
    let (code, reason) = match status {
        500 => ("InternalError", "Internal Server Error"),
        503 => ("SlowDown", "Service Unavailable"),
        429 => ("TooManyRequests", "Too Many Requests"),
        _ => ("InjectedFault", "Injected Fault"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>faults</RequestId></Error>"
    );
    format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(ProxyShared { fault: Fault::Pass, stats: ProxyStats::default() }));
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { continue };
                let sh = sh.clone();
                tokio::spawn(async move {
                    let _ = Self::serve(Conn::new(s), upstream, sh).await;
                });
            }
        });
        Proxy { url, shared, task }
    }

    pub fn set(&self, f: Fault) {
        self.shared.lock().unwrap().fault = f;
    }

    pub fn stats(&self) -> ProxyStats {
        self.shared.lock().unwrap().stats.clone()
    }

    async fn serve(mut c: Conn, upstream: SocketAddr, sh: Arc<Mutex<ProxyShared>>) -> std::io::Result<()> {
        while let Some(req) = c.read_msg(None).await? {
            let fault = {
                let mut g = sh.lock().unwrap();
                g.stats.requests += 1;
                if req.method == "PUT" {
                    g.stats.puts += 1;
                }
                match g.fault {
                    Fault::Mixed(p) if rand::random::<u32>() % 100 < p => match rand::random::<u32>() % 6 {
                        0 => Fault::Status(500),
                        1 => Fault::Status(503),
                        2 => Fault::Status(429),
                        3 => Fault::Reset,
                        4 => Fault::Delay(Duration::from_millis(700)),
                        _ => Fault::LoseResponse,
                    },
                    Fault::Mixed(_) => Fault::Pass,
                    f => f,
                }
            };
            let count = |f: fn(&mut ProxyStats) -> &mut u64| *f(&mut sh.lock().unwrap().stats) += 1;
            match fault {
                Fault::Status(code) => {
                    count(|s| &mut s.status_injected);
                    c.s.write_all(&error_xml(code)).await?;
                }
                Fault::Reset => {
                    count(|s| &mut s.resets);
                    reset(c.s);
                    return Ok(());
                }
                Fault::LoseResponse if req.method == "PUT" => {
                    let r = forward(upstream, &req).await;
                    count(|s| &mut s.forwarded);
                    if r.is_ok() {
                        count(|s| &mut s.lost_responses);
                    }
                    return Ok(()); // dropped without an answer
                }
                Fault::Delay(d) => {
                    let (resp, close) = forward(upstream, &req).await?;
                    count(|s| &mut s.forwarded);
                    count(|s| &mut s.delayed);
                    tokio::time::sleep(d).await;
                    c.s.write_all(&resp).await?;
                    if close {
                        return Ok(());
                    }
                }
                _ => {
                    let (resp, close) = forward(upstream, &req).await?;
                    count(|s| &mut s.forwarded);
                    c.s.write_all(&resp).await?;
                    if close {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
