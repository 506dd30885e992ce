//! `kiln serve` over real HTTP: every endpoint, whole and streamed, and requests decoded
//! together getting what each would alone.

mod common;

use common::serve::{
    base_run, encode, expected, expected_after, streamed_text, until_next_turn, Server,
};
use serde_json::{json, Value};

#[test]
fn models_health_and_the_page_are_served() {
    let run = base_run();
    let mut server = Server::start(run, &[]);
    assert!(server.is_up());
    let health = server.get("/health").json();
    assert_eq!(
        (health["status"].as_str(), health["model"].as_str()),
        (Some("ok"), Some("storyteller"))
    );
    let models = server.get("/v1/models").json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "storyteller");
    assert_eq!(server.get("/v1/models/storyteller").json()["id"], "storyteller");
    let missing = server.get("/v1/models/gpt-4");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    assert!(page.text().contains("/v1/chat/completions"));
}

#[test]
fn completions_whole_and_streamed_are_what_the_model_samples() {
    let run = base_run();
    let server = Server::start(run, &[]);
    let prompt = "Once upon a time";
    for (temperature, seed) in [(0.0, 0), (0.9, 7)] {
        let want = expected(run, prompt, 20, temperature, seed);
        let body = json!({"model": "storyteller", "prompt": prompt, "max_tokens": 20,
                          "temperature": temperature, "seed": seed});
        let whole = server.post("/v1/completions", &body);
        assert_eq!(whole.status, 200, "{}", whole.text());
        let whole = whole.json();
        assert_eq!(whole["object"], "text_completion");
        assert_eq!(whole["choices"][0]["text"], want.as_str());
        let usage = &whole["usage"];
        assert_eq!(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap(),
            usage["total_tokens"].as_u64().unwrap()
        );
        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let stream = server.post("/v1/completions", &streaming);
        assert!(stream.content_type.starts_with("text/event-stream"), "{}", stream.content_type);
        let events = stream.events();
        let (texts, finishes) = streamed_text(&events, false);
        assert_eq!(texts, std::slice::from_ref(&want));
        assert_eq!(finishes[0].as_deref(), whole["choices"][0]["finish_reason"].as_str());
        let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage_chunk["usage"], *usage);
    }
    // n choices are the seeds seed, seed + 1, …; a stop string ends the text before it.
    let body = json!({"model": "storyteller", "prompt": prompt, "max_tokens": 12, "n": 3,
                      "temperature": 1.0, "seed": 40});
    let choices = server.post("/v1/completions", &body).json()["choices"].clone();
    for i in 0..3 {
        assert_eq!(choices[i]["text"], expected(run, prompt, 12, 1.0, 40 + i as u64).as_str());
    }
    let full = expected(run, prompt, 20, 0.0, 0);
    let stop: String = full.chars().skip(6).take(3).collect();
    let body = json!({"model": "storyteller", "prompt": prompt, "max_tokens": 20,
                      "temperature": 0, "stop": [stop]});
    let cut = server.post("/v1/completions", &body).json();
    assert_eq!(cut["choices"][0]["text"], full[..full.find(&stop).unwrap()]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
}

#[test]
fn chat_replies_whole_and_streamed_follow_the_template() {
    let run = base_run();
    let server = Server::start(run, &[]);
    let messages = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who is Lily?"},
        {"role": "assistant", "content": "A girl."},
        {"role": "user", "content": [{"type": "text", "text": "Where does she live?"}]},
    ]);
    // The same tokens the model sees: the exchange so far in the Alpaca template.
    let alpaca = |instruction: &str| kiln::config::PromptTemplate::Alpaca.render(instruction, "");
    let (first, second) =
        (alpaca("Answer briefly.\n\nWho is Lily?"), alpaca("Where does she live?"));
    let ids = encode(run, &[&first, "A girl.", "<|endoftext|>", &second]);
    let want = until_next_turn(expected_after(run, &ids, 24, 0.0, 0));
    let body =
        json!({"model": "storyteller", "messages": messages, "max_tokens": 24, "temperature": 0});
    let whole = server.post("/v1/chat/completions", &body).json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["choices"][0]["message"]["content"], want.as_str());
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let events = server.post("/v1/chat/completions", &streaming).events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let (texts, finishes) = streamed_text(&events, true);
    assert_eq!(texts, [want]);
    assert_eq!(finishes[0].as_deref(), whole["choices"][0]["finish_reason"].as_str());
}

/// Many clients at once are decoded in one batch (no more rows than `--max-batch`; the rest
/// wait), and each gets what it would alone.
#[test]
fn concurrent_requests_share_the_batch_and_get_what_they_would_alone() {
    let run = base_run();
    let mut server = Server::start(run, &["--max-batch", "4"]);
    let prompts = ["Once upon a time", "The dog", "Lily and Tom went to the park. They", "Hi"];
    let jobs: Vec<(String, u64)> =
        (0..12).map(|i| (prompts[i % prompts.len()].to_string(), i as u64)).collect();
    let answers: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(prompt, seed)| {
                let server = &server;
                scope.spawn(move || {
                    let body = json!({"model": "storyteller", "prompt": prompt, "max_tokens": 40,
                                      "temperature": 1.0, "seed": seed, "stream": seed % 2 == 0});
                    let response = server.post("/v1/completions", &body);
                    match seed % 2 == 0 {
                        true => streamed_text(&response.events(), false).0.remove(0),
                        false => {
                            response.json()["choices"][0]["text"].as_str().unwrap().to_string()
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((prompt, seed), answer) in jobs.iter().zip(&answers) {
        assert_eq!(answer, &expected(run, prompt, 40, 1.0, *seed), "{prompt:?} seed {seed}");
    }
    let engine = server.get("/health").json()["engine"].clone();
    let largest = engine["largest_batch"].as_u64().unwrap();
    assert!((2..=4).contains(&largest), "never batched, or past --max-batch 4: {engine}");
    assert!(server.is_up());
}

/// SIGINT (Ctrl-C) and SIGTERM stop the server once the replies in flight are sent.
#[test]
fn a_stop_signal_ends_the_server_after_the_replies_in_flight() {
    let run = base_run();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut server = Server::start(run, &[]);
        let body = json!({"model": "storyteller", "prompt": "Once upon a time", "max_tokens": 100,
                          "temperature": 0, "stream": true});
        let addr = server.addr;
        let (mut chunks, mut signalled) = (Vec::new(), false);
        let pid = server.pid();
        kiln::serve::client::stream(addr, "/v1/completions", &body, |data| {
            chunks.push(data.to_string());
            if !signalled {
                // SAFETY: sends a signal to the server process this test started.
                assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
                signalled = true;
            }
        })
        .unwrap();
        let (texts, finishes) = streamed_text(&chunks, false);
        assert_eq!(texts, [expected(run, "Once upon a time", 100, 0.0, 0)]);
        assert!(finishes[0].is_some(), "{chunks:?}");
        let status = server.wait();
        assert!(status.success(), "signal {signal}: {status:?}");
    }
}
