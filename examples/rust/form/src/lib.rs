//! A form handled by POST, as examples/form.c, for both kinds of form body:
//! `application/x-www-form-urlencoded` (decoded with `form_urlencoded`) and
//! `multipart/form-data` (file uploads; parsed with `multer`).  GET shows
//! the form.
//!
//! multer is asynchronous; the whole body is already in memory here, so its
//! future never waits and is polled to the end on the spot.
use std::future::Future;
use std::io::Write;
use std::task::{Context, Poll, Waker};

const FORM: &str = "<form method=post><input name=name> <input name=comment> <button>Send</button></form>\n\
<form method=post enctype=multipart/form-data><input name=name> <input type=file name=upload> \
<button>Upload</button></form>\n";

fn put_html(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    for c in s.chars() {
        match c {
            '<' => out.write_all(b"&lt;")?,
            '>' => out.write_all(b"&gt;")?,
            '&' => out.write_all(b"&amp;")?,
            '"' => out.write_all(b"&quot;")?,
            c => write!(out, "{c}")?,
        }
    }
    Ok(())
}

/// A field of the form: name, and a text value or (file name, size).
enum Field {
    Text(String, String),
    File(String, String, usize),
}

fn urlencoded(body: &[u8]) -> Vec<Field> {
    form_urlencoded::parse(body).map(|(k, v)| Field::Text(k.into_owned(), v.into_owned())).collect()
}

/// Polls a future that cannot wait (its input is all in memory).
fn complete<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err("multipart parser waited on an in-memory body".into()),
    }
}

fn multipart(body: &[u8], content_type: &str) -> Result<Vec<Field>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let data = body.to_vec();
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(data) });
    let mut mp = multer::Multipart::new(stream, boundary);
    complete(async move {
        let mut fields = Vec::new();
        while let Some(field) = mp.next_field().await.map_err(|e| e.to_string())? {
            let name = field.name().unwrap_or("").to_string();
            let file = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| e.to_string())?;
            fields.push(match file {
                Some(f) => Field::File(name, f, bytes.len()),
                None => Field::Text(name, String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        Ok(fields)
    })?
}

fn form(req: &libcgi::Request, resp: &mut libcgi::Response) -> Result<(), String> {
    let ct = req.content_type().unwrap_or("");
    let fields = if req.method() != "POST" {
        None
    } else if ct.starts_with("multipart/form-data") {
        match multipart(req.body(), ct) {
            Ok(f) => Some(f),
            Err(e) => {
                resp.status(400).map_err(|e| e.to_string())?;
                resp.header("Content-Type", "text/plain").map_err(|e| e.to_string())?;
                writeln!(resp, "bad multipart body: {e}").map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
    } else {
        Some(urlencoded(req.body()))
    };
    resp.header("Content-Type", "text/html; charset=utf-8").map_err(|e| e.to_string())?;
    let out = (|| -> std::io::Result<()> {
        resp.write_all(b"<!doctype html><title>form</title>\n")?;
        let Some(fields) = fields else {
            return resp.write_all(FORM.as_bytes());
        };
        resp.write_all(b"<dl>\n")?;
        for f in &fields {
            resp.write_all(b"<dt>")?;
            match f {
                Field::Text(k, v) => {
                    put_html(resp, k)?;
                    resp.write_all(b"<dd>")?;
                    put_html(resp, v)?;
                }
                Field::File(k, name, size) => {
                    put_html(resp, k)?;
                    resp.write_all(b"<dd>file ")?;
                    put_html(resp, name)?;
                    write!(resp, ", {size} bytes")?;
                }
            }
            resp.write_all(b"\n")?;
        }
        resp.write_all(b"</dl>\n")
    })();
    out.map_err(|e| e.to_string())
}

libcgi::script!(form);

#[cfg(test)]
mod tests {
    use libcgi::testing::TestRequest;

    #[test]
    fn urlencoded_as_the_c_example() {
        let out = TestRequest::post("/form.so", b"name=Ada+L&comment=%3Cb%3E").run(super::form);
        assert_eq!(
            out.text(),
            "<!doctype html><title>form</title>\n<dl>\n<dt>name<dd>Ada L\n<dt>comment<dd>&lt;b&gt;\n</dl>\n"
        );
    }

    #[test]
    fn multipart_with_a_file() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nAda\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\
\x00\x01\x02\r\n--XyZ--\r\n";
        let out = TestRequest::post("/form.so", body)
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .run(super::form);
        assert_eq!(
            out.text(),
            "<!doctype html><title>form</title>\n<dl>\n<dt>name<dd>Ada\n<dt>upload<dd>file a.bin, 3 bytes\n</dl>\n"
        );
    }

    #[test]
    fn bad_multipart_is_a_400() {
        let out = TestRequest::post("/form.so", b"junk").header("Content-Type", "multipart/form-data").run(super::form);
        assert_eq!(out.status, 400);
    }
}
