//! A small JSON API with serde_json, written against the `http` crate and
//! served through libcgi's http adapter:
//!
//!   GET  /json.so/status          {"ok":true,"path":"/status","query":"..."}
//!   POST /json.so/orders          {"item":"tea","qty":3,"unit_cents":250}
//!                              -> 201 {"item":"tea","qty":3,"total_cents":750}
//!   anything else                 404 {"error":"..."}; bad JSON: 400
use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    item: String,
    qty: u32,
    unit_cents: u64,
}

#[derive(Serialize)]
struct Priced<'a> {
    item: &'a str,
    qty: u32,
    total_cents: u64,
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec(v).expect("a Value serialises");
    body.push(b'\n');
    Response::builder().status(status).header("Content-Type", "application/json").body(body).expect("valid")
}

fn api(req: Request<&[u8]>) -> Response<Vec<u8>> {
    // The URI is the one the client sent: /libcgi-bin/json.so/<route>.
    let path = req.uri().path();
    let route = path.find(".so").map_or(path, |i| &path[i + 3..]);
    match (req.method(), route) {
        (&Method::GET, "/status") => json(
            StatusCode::OK,
            &serde_json::json!({"ok": true, "path": route, "query": req.uri().query().unwrap_or("")}),
        ),
        (&Method::POST, "/orders") => match serde_json::from_slice::<Order>(req.body()) {
            Ok(o) => {
                let p = Priced { item: &o.item, qty: o.qty, total_cents: o.unit_cents * u64::from(o.qty) };
                json(StatusCode::CREATED, &serde_json::to_value(p).expect("serialises"))
            }
            Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e.to_string()})),
        },
        _ => json(StatusCode::NOT_FOUND, &serde_json::json!({"error": format!("no route {} {route}", req.method())})),
    }
}

libcgi::script! { http: api, thread_safe: true }

#[cfg(test)]
mod tests {
    use libcgi::testing::TestRequest;

    #[test]
    fn orders_are_priced() {
        let out = TestRequest::post("/json.so/orders", br#"{"item":"tea","qty":3,"unit_cents":250}"#)
            .header("Content-Type", "application/json")
            .run_http(super::api);
        assert_eq!(out.status, 201);
        assert_eq!(out.text(), "{\"item\":\"tea\",\"qty\":3,\"total_cents\":750}\n");
    }

    #[test]
    fn bad_json_is_a_400() {
        let out = TestRequest::post("/json.so/orders", b"{").run_http(super::api);
        assert_eq!(out.status, 400);
        assert!(out.text().starts_with("{\"error\":"), "{}", out.text());
    }
}
