//! `kiln serve` against the clients it will meet: 200 hostile requests, OpenAI's own Python
//! client, and the page in Debian's Chromium.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::serve::{base_run, encode, expected, expected_after, until_next_turn, Server};
use kiln::serve::client;
use serde_json::{json, Value};

/// Bodies that are not a request: broken JSON, JSON that is not an object, bytes.
fn malformed_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "{\"model\":",
        "{\"model\": \"storyteller\" \"prompt\": 1}",
        "nul",
        "[1, 2",
        "{\"model\": \"storyteller\"}}",
        "'single quotes'",
        "{model: storyteller}",
        "[]",
        "1",
        "\"text\"",
        "null",
        "true",
        "{\"a\": NaN}",
        "{\"max_tokens\": Infinity}",
        "{\"prompt\": \"\\ud800\"}",
        "\u{feff}{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(vec![0xff, 0xfe, 0x00, 0x7b]);
    bodies.push("[".repeat(100_000).into_bytes());
    bodies.push(format!("{{\"prompt\": \"{}", "a".repeat(1000)).into_bytes());
    bodies
}

/// Fields that are wrong for both endpoints, with the key they are about.
fn bad_settings() -> Vec<Value> {
    let mut bad = vec![
        json!({"max_tokens": -1}),
        json!({"max_tokens": 0}),
        json!({"max_tokens": 1.5}),
        json!({"max_tokens": "10"}),
        json!({"max_tokens": 1_000_000_000_000u64}),
        json!({"max_tokens": u64::MAX}),
        json!({"max_tokens": 1e300}),
        json!({"max_tokens": 1_000_000}),
        json!({"max_tokens": 100_000}),
        json!({"temperature": -1}),
        json!({"temperature": -0.0001}),
        json!({"temperature": 2.5}),
        json!({"temperature": "hot"}),
        json!({"temperature": [1]}),
        json!({"top_p": 0}),
        json!({"top_p": 1.5}),
        json!({"top_p": -0.5}),
        json!({"top_k": 0}),
        json!({"top_k": -3}),
        json!({"n": 0}),
        json!({"n": 17}),
        json!({"n": 1000}),
        json!({"n": "2"}),
        json!({"stop": ["a", "b", "c", "d", "e"]}),
        json!({"stop": [1]}),
        json!({"stop": {}}),
        json!({"stream": "yes"}),
        json!({"stream": 1}),
        json!({"stream_options": {"include_usage": true}}),
        json!({"stream": true, "stream_options": {"include_usage": "yes"}}),
        json!({"stream": true, "stream_options": {"other": true}}),
        json!({"seed": "x"}),
        json!({"seed": 1.5}),
        json!({"presence_penalty": 0.5}),
        json!({"frequency_penalty": -1}),
        json!({"logit_bias": {"1": 5}}),
        json!({"logit_bias": []}),
        json!({"foo": 1}),
        json!({"tools": []}),
        json!({"model": 1}),
        json!({"model": null}),
    ];
    for model in ["gpt-4o", "", " storyteller", "storyteller/../x", "STORYTELLER"] {
        bad.push(json!({"model": model}));
    }
    bad
}

/// Requests each endpoint must refuse: its valid body with one bad field (or one missing).
fn bad_requests() -> Vec<(&'static str, Value)> {
    let completion = json!({"model": "storyteller", "prompt": "Once", "max_tokens": 4});
    let chat = json!({"model": "storyteller", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let mut requests = Vec::new();
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    for (path, valid) in [
        ("/v1/completions", &completion),
        ("/v1/chat/completions", &chat),
        ("/v1/chat/completions", &streamed),
    ] {
        for change in bad_settings() {
            let streaming = valid["stream"] == json!(true);
            if streaming && change.as_object().unwrap().keys().any(|k| k.starts_with("stream")) {
                continue;
            }
            let mut body = valid.clone();
            for (key, value) in change.as_object().unwrap() {
                body[key] = value.clone();
            }
            if body["model"].is_null() {
                body.as_object_mut().unwrap().remove("model");
            }
            requests.push((path, body));
        }
    }
    let prompt = |p: Value| json!({"model": "storyteller", "prompt": p, "max_tokens": 4});
    for p in [json!(5), json!({}), json!([1, 2]), json!(["a", "b"]), json!("x ".repeat(40_000))] {
        requests.push(("/v1/completions", prompt(p)));
    }
    for extra in [json!({"echo": true}), json!({"best_of": 3}), json!({"logprobs": 2})] {
        let mut body = completion.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        requests.push(("/v1/completions", body));
    }
    let messages = |m: Value| json!({"model": "storyteller", "messages": m});
    for m in [
        json!([]),
        json!("Hi"),
        json!([{"role": "tool", "content": "x"}]),
        json!([{"role": "user"}]),
        json!([{"content": "x"}]),
        json!([{"role": "user", "content": 5}]),
        json!(["Hi"]),
        json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        json!([{"role": "assistant", "content": "x"}]),
        json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        json!([{"role": "system", "content": "only a system message"}]),
        json!([{"role": "user", "content": "x ".repeat(40_000)}]),
    ] {
        requests.push(("/v1/chat/completions", messages(m)));
    }
    let mut both = chat.clone();
    both["max_completion_tokens"] = json!(4);
    requests.push(("/v1/chat/completions", both));
    let mut logprobs = chat.clone();
    logprobs["logprobs"] = json!(true);
    requests.push(("/v1/chat/completions", logprobs));
    requests
}

#[test]
fn two_hundred_hostile_requests_get_4xx_and_the_server_stays_up() {
    let mut server = Server::start(base_run(), &[]);
    let addr = server.addr;
    let json_header = [("Content-Type", "application/json")];
    let mut answers: Vec<(String, client::Response)> = Vec::new();
    for path in ["/v1/completions", "/v1/chat/completions"] {
        for body in malformed_bodies() {
            let response = client::request(addr, "POST", path, &json_header, &body).unwrap();
            answers.push((
                format!("POST {path} {:?}", String::from_utf8_lossy(&body[..body.len().min(40)])),
                response,
            ));
        }
        // Over the 1 MiB limit: a long prompt, and bytes that are not even JSON.
        let huge = json!({"model": "storyteller", "prompt": "a".repeat(2 << 20)}).to_string();
        for body in [huge.into_bytes(), vec![b'x'; (1 << 20) + 1]] {
            let response = client::request(addr, "POST", path, &json_header, &body).unwrap();
            answers.push((format!("POST {path} of {} bytes", body.len()), response));
        }
    }
    for (path, body) in bad_requests() {
        answers.push((format!("POST {path} {body:.60}"), server.post(path, &body)));
    }
    for (method, path) in [
        ("GET", "/v1/completions"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v2/models"),
        ("GET", "/../../etc/passwd"),
        ("POST", "/health"),
        ("GET", "/v1/models/nope"),
    ] {
        answers.push((
            format!("{method} {path}"),
            client::request(addr, method, path, &[], b"").unwrap(),
        ));
    }
    assert!(answers.len() >= 200, "only {} hostile requests", answers.len());
    eprintln!("{} hostile requests", answers.len());
    for (what, response) in &answers {
        assert!(
            (400..500).contains(&response.status),
            "{what}: {} {}",
            response.status,
            response.text()
        );
        let error = &response.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            response.text()
        );
    }
    // Bytes that are not HTTP at all, and a client that hangs up mid-request.
    for garbage in
        [&b"HELLO\r\n\r\n"[..], b"\x16\x03\x01\x02\x00\x01\x00", b"GET / HTTP/9.9\r\n\r\n"]
    {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(garbage).unwrap();
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 4"), "{reply}");
    }
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"mod").unwrap();
    drop(half);
    // A streaming client that leaves early.
    let mut early = TcpStream::connect(addr).unwrap();
    let body = json!({"model": "storyteller", "prompt": "Once", "max_tokens": 100, "stream": true})
        .to_string();
    write!(early, "POST /v1/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut first = [0u8; 64];
    let _ = early.read(&mut first).unwrap();
    drop(early);
    assert!(server.is_up());
    let ok = server.post(
        "/v1/completions",
        &json!({"model": "storyteller", "prompt": "Once", "max_tokens": 4}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn the_official_openai_python_client_talks_to_it() {
    let run = base_run();
    let server = Server::start(run, &[]);
    let python = common::python_with("openai");
    let base_url = format!("http://{}/v1", server.addr);
    let out = common::run_python(&python, "openai_client.py", &[&base_url, "storyteller"]);
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["models"], json!(["storyteller"]));
    let want = expected(run, "Once upon a time", 12, 0.0, 0);
    assert_eq!(got["completion"], want.as_str());
    assert_eq!(got["completion_streamed"], want.as_str());
    assert!(got["completion_usage"].as_u64().unwrap() >= 1);
    assert_eq!(got["chat_role"], "assistant");
    assert_eq!(got["chat_streamed"], got["chat"]);
    assert!(got["chat_streamed_usage"].as_u64().unwrap() >= 1);
    assert_eq!(got["errors"]["negative_temperature"][0], 400);
    assert_eq!(got["errors"]["unknown_model"][0], 404);
    assert!(got["errors"]["unknown_model"][1].as_str().unwrap().contains("gpt-4o"));
}

/// The page in Debian's Chromium, headless, with a message to send on load: the reply the
/// model streams is on the page, and in a screenshot.
#[test]
fn the_page_shows_a_reply_in_a_real_browser() {
    let run = base_run();
    let server = Server::start(run, &[]);
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("the tests need Debian's chromium (apt-get install chromium; .ci/run installs it)");
    // A seed whose reply has some text (this small model often ends a reply at once).
    let prompt = kiln::config::PromptTemplate::Alpaca.render("Tell me a story.", "");
    let (seed, reply) = (0..50)
        .map(|seed| {
            (seed, until_next_turn(expected_after(run, &encode(run, &[&prompt]), 40, 1.0, seed)))
        })
        .find(|(_, reply)| reply.trim().len() >= 10)
        .expect("no seed gives a reply");
    let url = format!(
        "http://{}/?message=Tell%20me%20a%20story.&temperature=1&seed={seed}&max_tokens=40",
        server.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("page.png");
    let python = common::python_with("json");
    let shot_arg = shot.to_str().unwrap();
    let out = common::run_python(&python, "page_in_chromium.py", &[browser, &url, shot_arg]);
    let page: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        page,
        json!({"model": "storyteller", "asked": ["Tell me a story."],
                            "replies": [reply], "errors": []})
    );
    // The user's blue bubble, and dark text inside the assistant's white one.
    let image = image::open(&shot).unwrap().to_rgb8();
    let blue = image.pixels().filter(|p| p.0 == [0xdb, 0xe8, 0xf7]).count();
    assert!(blue > 1000, "no message bubble in the screenshot ({blue} pixels)");
    let in_reply = |y: u32| image.get_pixel(24, y).0 == [255, 255, 255];
    let text = (0..image.height())
        .filter(|&y| in_reply(y))
        .flat_map(|y| (24..image.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 110))
        .count();
    assert!(text > 100, "no reply text in the screenshot ({text} dark pixels in the bubble)");
}
