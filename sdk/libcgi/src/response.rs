//! The response: status and headers, then a body through `std::io::Write`,
//! all buffered into as few `lwrite` calls as the output needs.

use crate::host::Host;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Bytes buffered before they go to `lwrite`: a small response is one call.
const BUF: usize = 8192;

/// What can go wrong building a response.
#[derive(Debug)]
pub enum Error {
    /// A header name that is not an HTTP token (empty, or with a space,
    /// colon, control character ...).
    InvalidHeaderName(String),
    /// A header value with CR, LF, NUL or another control character (tab
    /// is allowed): refused so that no header can be injected.
    InvalidHeaderValue {
        /// The header's name.
        name: String,
    },
    /// A status outside 100-999.
    InvalidStatus(u16),
    /// `status` or `header` called after the body began: the header block
    /// has already been sent.
    HeadersSent,
    /// The host refused output (`lwrite` or `lflush` returned -1: client
    /// gone, or output after the module rejected the headers).
    Io(io::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidHeaderName(n) => write!(f, "invalid header name {n:?}"),
            Error::InvalidHeaderValue { name } => {
                write!(f, "invalid value for header {name:?} (CR, LF, NUL or another control character)")
            }
            Error::InvalidStatus(s) => write!(f, "invalid status {s}"),
            Error::HeadersSent => f.write_str("header set after the body began"),
            Error::Io(e) => write!(f, "output failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    }
}

/// An HTTP token (RFC 9110 `tchar`): what a header name may be made of.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: no CR, LF, NUL or other control character but tab.
/// Bytes >= 0x80 are allowed (obs-text).
pub fn valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Headers,
    Body,
    /// The host refused output: nothing more goes out.
    Failed,
}

/// The response of one request.
///
/// Headers first ([`status`](Response::status), [`header`](Response::header)),
/// then the body through [`std::io::Write`]: the first write (or
/// [`flush`](io::Write::flush), or the end of the handler) ends the header
/// block.  Output is buffered (8 KiB) into `lwrite`, so memory stays bounded
/// however much is written; `flush` sends what is buffered and calls
/// `lflush`, which pushes it to the client now.
///
/// `!Send`/`!Sync`: it writes through the request's thread's callbacks.
pub struct Response<'r> {
    host: &'r Host,
    state: State,
    status: u16,
    /// Anything handed to lwrite yet (after which a failure can no longer
    /// become a clean 500).
    sent: bool,
    len: usize,
    buf: [MaybeUninit<u8>; BUF],
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("state", &self.state)
            .field("status", &self.status)
            .field("buffered", &self.len)
            .field("sent", &self.sent)
            .finish()
    }
}

impl<'r> Response<'r> {
    pub(crate) fn new(host: &'r Host) -> Response<'r> {
        Response {
            host,
            state: State::Headers,
            status: 0,
            sent: false,
            len: 0,
            buf: [MaybeUninit::uninit(); BUF],
            _not_send: PhantomData,
        }
    }

    /// Sets the status (`Status:` header); 200 when never called.  An error
    /// after the body began, or for a status outside 100-999.
    pub fn status(&mut self, status: u16) -> Result<&mut Self> {
        if self.state != State::Headers {
            return Err(Error::HeadersSent);
        }
        if !(100..=999).contains(&status) {
            return Err(Error::InvalidStatus(status));
        }
        self.status = status;
        Ok(self)
    }

    /// Adds a header line.  An error for a name that is not an HTTP token, a
    /// value with CR, LF, NUL or another control character, or once the
    /// body began.  `Location` with a local path (and no status) is an
    /// internal redirect by the server, an absolute URL a 302, as with CGI.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<&mut Self> {
        let value = value.as_ref();
        if self.state != State::Headers {
            return Err(Error::HeadersSent);
        }
        if !valid_header_name(name) {
            return Err(Error::InvalidHeaderName(name.to_string()));
        }
        if !valid_header_value(value) {
            return Err(Error::InvalidHeaderValue { name: name.to_string() });
        }
        self.put(name.as_bytes())?;
        self.put(b": ")?;
        self.put(value)?;
        self.put(b"\r\n")?;
        Ok(self)
    }

    /// True once the header block is complete (the body began).
    pub fn headers_sent(&self) -> bool {
        self.state != State::Headers
    }

    /// Ends the header block: the status line if one was set, the blank line.
    fn end_headers(&mut self) -> io::Result<()> {
        if self.status != 0 {
            let reason =
                http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown");
            let mut num = [b'0'; 3];
            let mut s = self.status;
            for d in num.iter_mut().rev() {
                *d = b'0' + (s % 10) as u8;
                s /= 10;
            }
            self.put(b"Status: ")?;
            self.put(&num)?;
            self.put(b" ")?;
            self.put(reason.as_bytes())?;
            self.put(b"\r\n")?;
        }
        self.put(b"\r\n")?;
        self.state = State::Body;
        Ok(())
    }

    /// Appends to the buffer, sending it when full.
    #[inline]
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        if self.state == State::Failed {
            return Err(refused());
        }
        if data.len() <= BUF - self.len {
            // SAFETY: `len + data.len() <= BUF`; MaybeUninit<u8> has u8's
            // layout, and the bytes written become initialised.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.as_mut_ptr().add(self.len).cast(), data.len())
            };
            self.len += data.len();
            return Ok(());
        }
        self.put_slow(data)
    }

    #[cold]
    fn put_slow(&mut self, mut data: &[u8]) -> io::Result<()> {
        // Fill the buffer and send it, then send large pieces directly.
        let room = BUF - self.len;
        let (a, b) = data.split_at(room);
        self.put(a)?;
        self.send_buf()?;
        data = b;
        if data.len() >= BUF {
            self.lwrite(data)?;
            return Ok(());
        }
        self.put(data)
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: the first `len` bytes of buf were written by `put`.
        let data = unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len) };
        let r = self.lwrite_raw(data);
        self.len = 0;
        r
    }

    fn lwrite(&mut self, data: &[u8]) -> io::Result<()> {
        self.lwrite_raw(data)
    }

    fn lwrite_raw(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.sent = true;
        while !data.is_empty() {
            // lwrite returns an int: at most i32::MAX per call.
            let n = data.len().min(1 << 30);
            // SAFETY: `data` is valid for `n` bytes; the host's lwrite reads them.
            let r = unsafe { (self.host.lwrite)(data.as_ptr().cast(), n) };
            if r < 0 {
                self.state = State::Failed;
                return Err(refused());
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends the response: the header block if the handler wrote no body,
    /// then what is buffered.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.state == State::Headers {
            self.end_headers()?;
        }
        self.send_buf()
    }

    /// Drops what is buffered and refuses further output; true when nothing
    /// had reached the host yet (so the failure can still be a clean 500).
    pub(crate) fn abandon(&mut self) -> bool {
        self.len = 0;
        self.state = State::Failed;
        !self.sent
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "output refused by the server (client gone or bad headers)")
}

impl io::Write for Response<'_> {
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.state == State::Headers {
            self.end_headers()?;
        }
        self.put(data)?;
        Ok(data.len())
    }

    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data).map(|_| ())
    }

    /// Ends the header block if needed, sends what is buffered, and has the
    /// server push it to the client now (`lflush`).
    fn flush(&mut self) -> io::Result<()> {
        if self.state == State::Headers {
            self.end_headers()?;
        }
        self.send_buf()?;
        // SAFETY: lflush takes no arguments.
        if unsafe { (self.host.lflush)() } < 0 {
            self.state = State::Failed;
            return Err(refused());
        }
        Ok(())
    }
}
