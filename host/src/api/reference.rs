//! The API reference page (`GET /docs`): the OpenAPI document rendered as
//! one self-contained HTML page (operations by tag with their scopes,
//! parameters, bodies and answers, then every schema). Rendered on the
//! server from the same document `/v1/openapi.json` serves, with no script
//! and nothing fetched from elsewhere.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The page for `doc`.
pub(crate) fn render(doc: &utoipa::openapi::OpenApi) -> String {
    let doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    let mut page = String::new();
    let title = text(&doc["info"]["title"]);
    let version = text(&doc["info"]["version"]);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API reference</title><style>{STYLE}</style></head><body><main>\
         <h1>{title} API <small>{version}</small></h1><p>{}</p>\
         <p>The machine-readable document: <a href=\"/v1/openapi.json\">/v1/openapi.json</a> (OpenAPI {}).</p>",
        prose(&doc["info"]["description"]),
        text(&doc["openapi"]),
    );
    let empty = Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let mut toc = String::from("<nav><ul>");
    let mut body = String::new();
    for tag in doc["tags"].as_array().into_iter().flatten() {
        let name = text(&tag["name"]);
        let _ = write!(toc, "<li><a href=\"#tag-{name}\">{name}</a></li>");
        let _ = write!(body, "<section><h2 id=\"tag-{name}\">{name}</h2><p>{}</p>", prose(&tag["description"]));
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap_or(&empty) {
                let tagged = op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t.as_str() == Some(&name)));
                if tagged {
                    operation(&mut body, method, path, op, &doc);
                }
            }
        }
        body.push_str("</section>");
    }
    toc.push_str("<li><a href=\"#schemas\">schemas</a></li></ul></nav>");
    page.push_str(&toc);
    page.push_str(&body);
    page.push_str("<section><h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap_or(&empty) {
        let _ = write!(page, "<h3 id=\"schema-{}\">{}</h3>", escape(name), escape(name));
        describe(&mut page, schema);
    }
    page.push_str("</section></main></body></html>");
    page
}

fn operation(out: &mut String, method: &str, path: &str, op: &Value, doc: &Value) {
    let id = format!("{method}-{path}").replace(['/', '{', '}', ':', '.'], "-");
    let _ = write!(
        out,
        "<article id=\"{}\"><h3><span class=\"method {method}\">{}</span> <code>{}</code></h3>",
        escape(&id),
        method.to_uppercase(),
        escape(path)
    );
    let scopes: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["token"].as_array())
        .flatten()
        .map(text)
        .collect();
    let _ = write!(
        out,
        "<p class=\"scope\">{}</p>",
        if scopes.is_empty() {
            "No token needed.".to_owned()
        } else {
            format!("Token scope: <b>{}</b>", scopes.join(", "))
        }
    );
    for field in ["summary", "description"] {
        if op[field].is_string() {
            let _ = write!(out, "<p>{}</p>", prose(&op[field]).replace("\n\n", "</p><p>"));
        }
    }
    if let Some(params) = op["parameters"].as_array() {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>");
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&p["name"]),
                if p["required"] == true { " <b>required</b>" } else { "" },
                text(&p["in"]),
                kind(&p["schema"]),
                prose(&p["description"])
            );
        }
        out.push_str("</table>");
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        out.push_str("<p>Body:</p><ul>");
        for (media, c) in content {
            let _ = write!(out, "<li><code>{}</code>: {}</li>", escape(media), kind(&c["schema"]));
            if let Some(example) = example(&c["schema"], doc) {
                let pretty = serde_json::to_string_pretty(example).unwrap_or_default();
                let _ = write!(out, "<pre>{}</pre>", escape(&pretty));
            }
        }
        out.push_str("</ul>");
    }
    out.push_str("<table><tr><th>status</th><th>when</th><th>body</th></tr>");
    for (status, r) in op["responses"].as_object().into_iter().flatten() {
        let bodies: Vec<String> = r["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, c)| format!("<code>{}</code> {}", escape(media), kind(&c["schema"])))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(status),
            prose(&r["description"]),
            bodies.join("<br>")
        );
    }
    out.push_str("</table></article>");
}

/// A schema's properties as a table, or its shape in a line.
fn describe(out: &mut String, schema: &Value) {
    if schema["description"].is_string() {
        let _ = write!(out, "<p>{}</p>", prose(&schema["description"]));
    }
    if schema["example"].is_object() {
        let pretty = serde_json::to_string_pretty(&schema["example"]).unwrap_or_default();
        let _ = write!(out, "<pre>{}</pre>", escape(&pretty));
    }
    let Some(properties) = schema["properties"].as_object() else {
        let _ = write!(out, "<p>{}</p>", kind(schema));
        return;
    };
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("<table><tr><th>field</th><th>type</th><th></th></tr>");
    for (name, p) in properties {
        let _ = write!(
            out,
            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            if required.contains(&name.as_str()) { " <b>required</b>" } else { "" },
            kind(p),
            prose(&p["description"])
        );
    }
    out.push_str("</table>");
}

/// The example of a schema, or of the component it names.
fn example<'a>(schema: &'a Value, doc: &'a Value) -> Option<&'a Value> {
    let schema = match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    };
    Some(&schema["example"]).filter(|e| !e.is_null())
}

/// A schema in a few words: a link to a named one, or its type.
fn kind(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(items) = schema[combinator].as_array() {
            let parts: Vec<String> = items.iter().map(kind).collect();
            let joiner = if combinator == "allOf" { " and " } else { " or " };
            return parts.join(joiner);
        }
    }
    let mut words = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts.iter().map(text).collect::<Vec<_>>().join(" or "),
        _ => "any".to_owned(),
    };
    if words.starts_with("array") {
        words = format!("array of {}", kind(&schema["items"]));
    }
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(words, " ({})", escape(format));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("<code>{}</code>", escape(&v.to_string()))).collect();
        let _ = write!(words, ": {}", values.join(", "));
    }
    words
}

/// A JSON string's text, escaped; anything else as empty.
fn text(value: &Value) -> String {
    value.as_str().map(escape).unwrap_or_default()
}

/// A description as HTML: escaped, with `code spans` as `<code>`.
fn prose(value: &Value) -> String {
    let escaped = text(value);
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2430}\
main{max-width:960px;margin:0 auto;padding:1rem 1.5rem}\
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4rem 1rem}\
article{border-top:1px solid #d8dde6;padding:.5rem 0}\
table{border-collapse:collapse;width:100%;margin:.4rem 0}\
td,th{border:1px solid #d8dde6;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f5f8}code{font-size:90%}.scope{color:#4a5568}\
.method{display:inline-block;min-width:4.5em;font-size:80%;padding:.1rem .4rem;border-radius:4px;color:#fff;background:#4a5568}\
.get{background:#2b6cb0}.post{background:#2f855a}.put{background:#b7791f}.delete{background:#c53030}\
h1 small{font-size:50%;color:#4a5568}\
pre{background:#f3f5f8;padding:.5rem;overflow:auto;font-size:85%}";

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi as _;

    #[test]
    fn every_operation_and_schema_is_on_the_page_escaped() {
        let doc = super::super::openapi::ApiDoc::openapi();
        let page = render(&doc);
        let json = serde_json::to_value(&doc).unwrap();
        for (path, item) in json["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let heading = format!("{}</span> <code>{}</code>", method.to_uppercase(), escape(path));
                assert!(page.contains(&heading), "{method} {path} is not on the page");
            }
        }
        for name in json["components"]["schemas"].as_object().unwrap().keys() {
            assert!(page.contains(&format!("id=\"schema-{name}\"")), "schema {name} is not on the page");
        }
        assert!(!page.contains("<script"), "the page runs no script");
        assert_eq!(escape("<a href=\"x\">&</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
        assert_eq!(prose(&Value::from("a `<b>` c")), "a <code>&lt;b&gt;</code> c");
        assert!(page.contains("&quot;idempotency_key&quot;: &quot;order-42&quot;"), "the submission example is shown");
    }
}
