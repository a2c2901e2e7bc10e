//! `paddock image pull|import|ls|rm`, with a progress bar for pulls.

use http_body_util::BodyExt as _;

use super::{CliError, ImageCommand};
use crate::client::Client;

pub async fn run(client: &Client, json: bool, cmd: ImageCommand) -> Result<(), CliError> {
    match cmd {
        ImageCommand::Pull { url, sha256 } => pull(client, json, &url, &sha256).await,
        ImageCommand::Import { path } => {
            let path = std::path::absolute(&path).map_err(|e| CliError::Other(format!("{path:?}: {e}")))?;
            let img = client.image_import(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&img).unwrap_or_default());
            } else {
                println!("sha256:{} ({} bytes)", img.sha256, img.size);
            }
            Ok(())
        }
        ImageCommand::Ls => {
            let imgs = client.image_list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&imgs).unwrap_or_default());
            } else {
                println!("{:<71}  {:>12}  USED BY", "IMAGE", "SIZE");
                for i in imgs {
                    println!("sha256:{:<64}  {:>12}  {}", i.sha256, i.size, if i.used_by.is_empty() { "-".into() } else { i.used_by.join(", ") });
                }
            }
            Ok(())
        }
        ImageCommand::Rm { sha256 } => {
            client.image_remove(sha256.trim_start_matches("sha256:")).await?;
            if !json {
                println!("{sha256}: removed");
            }
            Ok(())
        }
    }
}

async fn pull(client: &Client, json: bool, url: &str, sha256: &str) -> Result<(), CliError> {
    let mut body = client.image_pull(url, sha256.trim_start_matches("sha256:")).await?;
    // A spinner until the size is known: a bar of length 0 would be drawn
    // full ("0 B/0 B" and a complete bar) before the first byte arrives.
    let bar = indicatif::ProgressBar::no_length();
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}").unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut sized = false;
    let mut buf = Vec::new();
    let mut outcome = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CliError::Other(e.to_string()))?;
        if let Some(d) = frame.data_ref() {
            buf.extend_from_slice(d);
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            if let Some(p) = v.get("progress") {
                if let Some(t) = p["total"].as_u64().filter(|t| *t > 0) {
                    if !sized {
                        sized = true;
                        bar.set_style(
                            indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                    }
                    bar.set_length(t);
                }
                bar.set_position(p["done"].as_u64().unwrap_or(0));
            } else {
                outcome = Some(v);
            }
        }
    }
    bar.finish_and_clear();
    match outcome {
        Some(v) if v.get("image").is_some() => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v["image"]).unwrap_or_default());
            } else {
                println!("sha256:{} ({} bytes)", v["image"]["sha256"].as_str().unwrap_or(""), v["image"]["size"]);
            }
            Ok(())
        }
        Some(v) => Err(CliError::Other(v["error"]["message"].as_str().unwrap_or("pull failed").to_string())),
        None => Err(CliError::Other("the daemon ended the pull without a result".into())),
    }
}
