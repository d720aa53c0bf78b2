//! `GET /openapi.json` of a real `entsync serve`: an OpenAPI 3.1 document that lists
//! every route, and real answers of each route validated against the schema the
//! document gives for their status and media type (a small JSON Schema validator:
//! `$ref`, `type` with `null`, `required`, `properties`, `items`, `oneOf` with exactly
//! one match, `enum`, `minimum`, `format: date-time`). The validator is shown to reject
//! broken answers too, so that a pass means something.

use crate::http::{request, Response, Server, TestResult};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "openapi-test-token";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/http")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn get(server: &Server, path: &str, token: bool) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let headers: &[(&str, &[u8])] = if token {
        &[("Authorization", auth.as_bytes())]
    } else {
        &[]
    };
    request(server.addr, "GET", path, headers, b"")
}

// ---------------------------------------------------------------------------------------
// A small JSON Schema validator, enough for what utoipa emits

struct Validator<'a> {
    doc: &'a Value,
}

impl Validator<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("ref {r}"));
                let target = self
                    .doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}"));
                self.resolve(target)
            }
            None => schema,
        }
    }

    /// Every violation of `schema` by `value`, as `path: what`.
    fn errors(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let schema = self.resolve(schema);
        let mut errors = Vec::new();
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad type {other} at {at}"),
            };
            let fits = types.iter().any(|t| match *t {
                "null" => value.is_null(),
                "boolean" => value.is_boolean(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                other => panic!("unknown type {other} at {at}"),
            });
            if !fits {
                errors.push(format!("{at}: {value} is not of type {types:?}"));
                return errors;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let (Some(min), Some(n)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if n < min {
                errors.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time") {
            if let Some(s) = value.as_str() {
                if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                    errors.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
                }
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: required property {name:?} is missing"));
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    if let Some(v) = object.get(name) {
                        errors.extend(self.errors(property, v, &format!("{at}.{name}")));
                    }
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, v) in array.iter().enumerate() {
                errors.extend(self.errors(items, v, &format!("{at}[{i}]")));
            }
        }
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = variants
                .iter()
                .filter(|v| self.errors(v, value, at).is_empty())
                .count();
            if matching != 1 {
                errors.push(format!(
                    "{at}: {value} matches {matching} of the oneOf's variants, not exactly one"
                ));
            }
        }
        errors
    }

    /// The schema the document gives for `status` of `method path`, and its media type.
    fn response(&self, method: &str, path: &str, status: u16) -> (&Value, String) {
        let response = self
            .doc
            .pointer(&format!(
                "/paths/{}/{method}/responses/{status}",
                path.replace('~', "~0").replace('/', "~1")
            ))
            .unwrap_or_else(|| panic!("{method} {path}: status {status} is not in the document"));
        let content = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status}: no content"));
        assert_eq!(content.len(), 1, "{method} {path} {status}: one media type");
        let (media, body) = content.iter().next().expect("one media type");
        (&body["schema"], media.clone())
    }

    /// Checks a real response against the document: status listed, media type as
    /// declared, and (for JSON) the body valid against the declared schema.
    fn check(&self, method: &str, path: &str, resp: &Response) -> Value {
        let (schema, media) = self.response(method, path, resp.status);
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with(&media),
            "{method} {path} {}: content-type {content_type:?}, documented {media:?}",
            resp.status
        );
        if media != "application/json" {
            return Value::Null;
        }
        let body = resp.json();
        let errors = self.errors(schema, &body, "$");
        assert!(
            errors.is_empty(),
            "{method} {path} {}: {body} does not match its schema:\n{}",
            resp.status,
            errors.join("\n")
        );
        body
    }
}

// ---------------------------------------------------------------------------------------

fn open_stream(server: &Server) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "GET /v1/changes/stream?after=0 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send");
    BufReader::new(stream)
}

/// The stream's status, content type and first event's `data`.
fn first_event(reader: &mut BufReader<TcpStream>) -> (String, String, Value) {
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_string();
            }
        }
    }
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended"
        );
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            let data = serde_json::from_str(data.trim()).expect("data is json");
            return (status, content_type, data);
        }
    }
}

const ROUTES: [(&str, &str); 9] = [
    ("post", "/webhooks/dodo"),
    ("get", "/v1/access/{customer_id}/{entitlement_id}"),
    ("get", "/v1/customers/{customer_id}"),
    ("get", "/v1/credits/{customer_id}/{credit_entitlement_id}"),
    ("get", "/v1/changes"),
    ("get", "/v1/changes/stream"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[test]
fn the_document_is_openapi_3_1_and_every_answer_matches_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        &dir.path().join("db.sqlite"),
        &[("ENTSYNC_API_TOKEN", TOKEN)],
        &[],
    );
    // The document is public.
    let resp = get(&server, "/openapi.json", false);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let doc = resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let v = Validator { doc: &doc };

    // Every route, and no other; the token where the server asks for it.
    let paths = doc["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), ROUTES.len(), "{:?}", paths.keys());
    let bearer = &doc["components"]["securitySchemes"]["api_token"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let guarded = path.starts_with("/v1/") || path == "/metrics";
        assert_eq!(
            op["security"] == json!([{"api_token": []}]),
            guarded,
            "{method} {path}: security {}",
            op["security"]
        );
        assert_eq!(
            op["responses"]["401"].is_object(),
            guarded || path == "/webhooks/dodo"
        );
        if path.starts_with("/v1/") && path != "/v1/changes/stream" {
            assert!(
                op["responses"]["503"]["headers"]["Retry-After"].is_object(),
                "{path}"
            );
        }
    }
    let webhook = &doc["paths"]["/webhooks/dodo"]["post"];
    for status in ["200", "400", "401", "408", "413", "500", "503"] {
        assert!(webhook["responses"][status].is_object(), "webhook {status}");
    }
    let headers: Vec<&str> = webhook["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "header" && p["required"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        headers,
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    let query: Vec<&str> = doc["paths"]["/v1/changes"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(query, ["after", "limit", "wait"]);
    assert!(
        doc["paths"]["/v1/changes/stream"]["get"]["responses"]["200"]["content"]
            ["text/event-stream"]
            .is_object()
    );
    assert!(
        doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object()
    );

    // The validator rejects what it should, so that the passes below mean something.
    let access_schema = json!({"$ref": "#/components/schemas/Access"});
    let cause_schema = json!({"$ref": "#/components/schemas/Cause"});
    for (schema, bad) in [
        (&access_schema, json!({"allowed": true})),
        (
            &access_schema,
            json!({"allowed": "yes", "customer_id": "c"}),
        ),
        (
            &cause_schema,
            json!({"kind": "delivery", "delivery_id": "d"}),
        ),
        (&cause_schema, json!({"kind": "weather", "detail": "rain"})),
        (&cause_schema, json!({"kind": "time", "detail": 3})),
    ] {
        assert!(!v.errors(schema, &bad, "$").is_empty(), "{bad} passed");
    }
    let time = json!({"kind": "time", "detail": "license_key_expired"});
    assert!(v.errors(&cause_schema, &time, "$").is_empty());

    // Webhooks: every outcome's 200, and the 401 of a bad signature.
    let webhook_path = "/webhooks/dodo";
    for (id, file) in [
        ("msg_oa_1", "grant_pending.json"),
        ("msg_oa_2", "grant_delivered.json"),
        ("msg_oa_3", "credit_added.json"),
        ("msg_oa_4", "unknown_type.json"),
        ("msg_oa_5", "not_json.txt"),
        ("msg_oa_2", "grant_delivered.json"),
    ] {
        let resp = server.post(id, &fixture(file));
        assert_eq!(resp.status, 200, "{file}: {}", resp.text());
        v.check("post", webhook_path, &resp);
    }
    let unsigned = request(
        server.addr,
        "POST",
        webhook_path,
        &[("webhook-id", b"msg_x")],
        b"{}",
    );
    assert_eq!(unsigned.status, 401);
    v.check("post", webhook_path, &unsigned);

    // The read API, the token refused and given.
    let access = "/v1/access/{customer_id}/{entitlement_id}";
    let customer = "/v1/customers/{customer_id}";
    let credits = "/v1/credits/{customer_id}/{credit_entitlement_id}";
    let changes = "/v1/changes";
    for (template, real) in [
        (access, "/v1/access/cus_http_1/ent_http_1"),
        (access, "/v1/access/cus_nobody/ent_none"),
        (customer, "/v1/customers/cus_http_1"),
        (customer, "/v1/customers/cus_nobody"),
        (credits, "/v1/credits/cus_http_1/cent_http_1"),
        (credits, "/v1/credits/cus_http_1/cent_none"),
        (changes, "/v1/changes"),
        (changes, "/v1/changes?after=1&limit=1"),
        (changes, "/v1/changes?after=99999&wait=0.1"),
    ] {
        let refused = get(&server, real, false);
        assert_eq!(refused.status, 401, "{real}");
        v.check("get", template, &refused);
        let resp = get(&server, real, true);
        assert_eq!(resp.status, 200, "{real}: {}", resp.text());
        v.check("get", template, &resp);
    }
    // The answers are not trivially empty: the nested schemas were exercised.
    let allowed = get(&server, "/v1/access/cus_http_1/ent_http_1", true).json();
    assert_eq!(allowed["allowed"], true, "{allowed}");
    let view = get(&server, "/v1/customers/cus_http_1", true).json();
    assert!(
        !view["grants"].as_array().expect("grants").is_empty(),
        "{view}"
    );
    assert!(
        !view["credits"].as_array().expect("credits").is_empty(),
        "{view}"
    );
    let page = get(&server, "/v1/changes", true).json();
    let first = &page["changes"][0];
    assert_eq!(first["cause"]["kind"], "delivery", "{page}");
    let none = get(&server, "/v1/credits/cus_http_1/cent_none", true).json();
    assert!(
        none["entry_id"].is_null() && none["as_of"].is_null(),
        "{none}"
    );

    // 400s: a bad parameter, a path that does not decode (JSON like every error).
    for (template, real) in [
        (changes, "/v1/changes?limit=0"),
        (changes, "/v1/changes?after="),
        (changes, "/v1/changes?limit=9223372036854775808"),
        (customer, "/v1/customers/%FF"),
        (access, "/v1/access/%C3%28/ent"),
    ] {
        let resp = get(&server, real, true);
        assert_eq!(resp.status, 400, "{real}: {}", resp.text());
        let body = v.check("get", template, &resp);
        assert_eq!(body["error"], "bad_request");
    }
    // 404: the JSON fallback, as documented for the routes with path segments.
    let resp = get(&server, "/v1/customers/", true);
    assert_eq!(resp.status, 404);
    assert_eq!(v.check("get", customer, &resp)["error"], "not_found");

    // The stream: its media type, and its first event a Change.
    let mut stream = open_stream(&server);
    let (status, content_type, data) = first_event(&mut stream);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let change_schema = json!({"$ref": "#/components/schemas/Change"});
    let errors = v.errors(&change_schema, &data, "$");
    assert!(errors.is_empty(), "{data}: {errors:?}");
    assert_eq!(data, *first);
    drop(stream);

    // Operations: public health, guarded metrics, and the document counted in them.
    let health = get(&server, "/healthz", false);
    assert_eq!(health.status, 200);
    assert_eq!(v.check("get", "/healthz", &health)["status"], "ok");
    let refused = get(&server, "/metrics", false);
    assert_eq!(refused.status, 401);
    v.check("get", "/metrics", &refused);
    let metrics = get(&server, "/metrics", true);
    assert_eq!(metrics.status, 200);
    v.check("get", "/metrics", &metrics);
    assert!(
        metrics
            .text()
            .contains("entsync_http_request_duration_seconds_count{route=\"/openapi.json\"} 1"),
        "{}",
        metrics.text()
    );
    Ok(())
}

#[test]
fn without_a_token_the_document_asks_for_none() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("db.sqlite"), &[], &[]);
    let doc = get(&server, "/openapi.json", false).json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["securitySchemes"]
        .get("api_token")
        .is_none());
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.get("security").is_none(), "{method} {path}");
        assert_eq!(op["responses"]["401"].is_object(), path == "/webhooks/dodo");
    }
    // And the read API indeed answers without one.
    let v = Validator { doc: &doc };
    let resp = get(&server, "/v1/access/cus_1/ent_1", false);
    assert_eq!(resp.status, 200);
    v.check("get", "/v1/access/{customer_id}/{entitlement_id}", &resp);
    Ok(())
}
