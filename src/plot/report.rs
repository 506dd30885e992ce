//! `report.html`: one self-contained page per run (the curves inlined as PNG data, no
//! network, no scripts) with the summary, the samples and the config, for a browser or a
//! colleague's mail client.

use std::fmt::Write as _;

use crate::run::RunDir;

/// Writes `<run>/report.html` from the files the run holds; a missing part is left out.
pub fn write_report(run: &RunDir, name: &str) -> std::io::Result<std::path::PathBuf> {
    let read = |path: std::path::PathBuf| std::fs::read(path).ok();
    let mut page = String::new();
    let title = escape(name);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>kiln run {title}</title><style>{STYLE}</style></head><body>\n\
         <h1>kiln run <code>{title}</code></h1>\n"
    );
    if let Some(summary) = read(run.summary()).and_then(|b| serde_json::from_slice(&b).ok()) {
        page.push_str(&summary_table(&summary));
    }
    for (heading, path) in [("Loss", run.loss_plot()), ("Learning rate", run.lr_plot())] {
        if let Some(png) = read(path) {
            let _ = write!(
                page,
                "<h2>{heading}</h2>\n<img alt=\"{heading} curve\" src=\"data:image/png;base64,{}\">\n",
                base64(&png)
            );
        }
    }
    if let Some(samples) = read(run.samples()) {
        let text = escape(&String::from_utf8_lossy(&samples));
        let _ = write!(page, "<h2>Samples</h2>\n<pre class=\"sample\">{text}</pre>\n");
    }
    if let Some(config) = read(run.config()) {
        let text = escape(&String::from_utf8_lossy(&config));
        let _ = write!(page, "<h2>Config</h2>\n<pre>{text}</pre>\n");
    }
    page.push_str("</body></html>\n");
    let path = run.report();
    crate::files::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;\
padding:0 1em;color:#222}table{border-collapse:collapse}td{padding:2px 12px 2px 0}\
td:first-child{color:#666}img{max-width:100%;border:1px solid #ddd}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto}pre.sample{white-space:pre-wrap}";

/// `summary.json` as a two-column table, in the file's order.
fn summary_table(summary: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut table = String::from("<h2>Summary</h2>\n<table>\n");
    for (key, value) in summary {
        let shown = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.4}"),
                _ => n.to_string(),
            },
            other => other.to_string(),
        };
        let _ = writeln!(table, "<tr><td>{}</td><td>{}</td></tr>", escape(key), escape(&shown));
    }
    table.push_str("</table>\n");
    table
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for `data:` URLs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{base64, escape};

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn text_cannot_open_tags() {
        assert_eq!(escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
