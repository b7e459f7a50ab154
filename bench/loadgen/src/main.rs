//! Open-loop load at a fixed rate, as `bench/load_bench.sh` needs it.
//!
//! Request `i` is due at `start + i / rate` whatever happened before it, and
//! its latency counts from that moment, not from when it was sent: a server
//! that stalls is charged for every request that queued behind the stall
//! (no coordinated omission, unlike a closed loop such as wrk's).
//! Requests go round-robin over the given servers, as a load balancer
//! would send them, and cycle over deployments `1..=N` in the path.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Base URLs of the servers (`https://localhost:8443`), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// The path; `{n}` becomes the deployment number (in the body too).
    #[arg(long)]
    path: String,
    /// Deployments to cycle over.
    #[arg(long, default_value_t = 1000)]
    deployments: u64,
    #[arg(long, default_value = "POST")]
    method: String,
    #[arg(long, default_value = "{}")]
    body: String,
    /// Requests per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// PEM file of the CA that signed the servers' certificates.
    #[arg(long)]
    cacert: String,
    /// `user:password` for HTTP Basic.
    #[arg(long, env = "LOADGEN_AUTH")]
    auth: String,
    /// Extra headers, `Name: value`.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Where to write the `Location` of every 202, one per line.
    #[arg(long)]
    locations: Option<String>,
}

struct Outcome {
    /// Seconds from the start at which the request was due.
    second: u64,
    status: u16,
    latency: Duration,
    location: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let ca = std::fs::read(&args.cacert).with_context(|| format!("reading {}", args.cacert))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h.split_once(':').context("a header is `Name: value`")?;
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            value.trim().parse()?,
        );
    }
    headers.insert(reqwest::header::CONTENT_TYPE, "application/json".parse()?);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .default_headers(headers)
        .build()?;
    let (user, password) = args.auth.split_once(':').context("--auth is user:password")?;
    let (user, password) = (user.to_string(), password.to_string());
    let method: reqwest::Method = args.method.parse()?;

    // Open every connection before the clock starts.
    for s in &args.servers {
        client.get(format!("{s}/strongbox/health")).send().await?;
    }
    let total = args.rate * args.seconds;
    let period = Duration::from_secs(1) / args.rate as u32;
    // Paced by a thread of its own with the OS's sleep (microseconds), not
    // the runtime's timer (whole milliseconds late, which would be charged
    // to the server).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pacer = {
        let args = args.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..total {
                let due = start + period * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let server = &args.servers[i as usize % args.servers.len()];
                let n = (i % args.deployments + 1).to_string();
                let request = client
                    .request(method.clone(), format!("{server}{}", args.path.replace("{n}", &n)))
                    .basic_auth(&user, Some(&password))
                    .body(args.body.replace("{n}", &n));
                let second = i / args.rate;
                let _ = tx.send(runtime.spawn(async move {
                    let (status, location) = match request.send().await {
                        Ok(r) => {
                            let location = r
                                .headers()
                                .get(reqwest::header::LOCATION)
                                .and_then(|l| l.to_str().ok())
                                .map(String::from);
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            (status, location)
                        }
                        Err(_) => (0, None), // connection failure: counted apart from any status
                    };
                    Outcome {
                        second,
                        status,
                        latency: due.elapsed(),
                        location,
                    }
                }));
            }
            start.elapsed()
        })
    };
    let mut outcomes = Vec::with_capacity(total as usize);
    while let Some(task) = rx.recv().await {
        outcomes.push(task.await?);
    }
    let sent_in = pacer.join().expect("pacer thread");

    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    let mut ms_by_status = std::collections::BTreeMap::<u16, Vec<f64>>::new();
    for o in &outcomes {
        *by_status.entry(o.status).or_default() += 1;
        ms_by_status
            .entry(o.status)
            .or_default()
            .push(o.latency.as_secs_f64() * 1e3);
    }
    let mut ms: Vec<f64> = outcomes.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect();
    let percentile = |ms: &mut Vec<f64>, p: f64| {
        ms.sort_by(f64::total_cmp);
        ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1]
    };
    let mut pct = |p: f64| percentile(&mut ms, p);
    if let Some(file) = &args.locations {
        let lines: String = outcomes
            .iter()
            .filter(|o| o.status == 202)
            .filter_map(|o| o.location.as_deref())
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(file, lines)?;
    }
    let summary = serde_json::json!({
        "requests": outcomes.len(),
        "offered_rate": args.rate,
        "achieved_send_rate": outcomes.len() as f64 / sent_in.as_secs_f64(),
        "by_status": by_status,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "p99_ms_by_5s": outcomes
            .chunk_by(|a, b| a.second / 5 == b.second / 5)
            .map(|w| percentile(&mut w.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect(), 0.99))
            .collect::<Vec<_>>(),
        "p99_ms_by_status": ms_by_status.iter_mut().map(|(s, ms)| (s.to_string(), percentile(ms, 0.99).into()))
            .collect::<serde_json::Map<_, _>>(),
    });
    println!("{summary}");
    Ok(())
}
