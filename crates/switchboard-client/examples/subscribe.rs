//! Subscribes to one channel and prints every event, reconnecting and recovering as needed.
//!
//! ```sh
//! cargo run --release -p switchboard-server -- serve --dev
//! cargo run -p switchboard-client --example subscribe -- ws://127.0.0.1:8000/connection/websocket news
//! curl -s -X POST http://127.0.0.1:8000/api/publish -d '{"channel": "news", "data": {"text": "hi"}}'
//! ```
//!
//! A connection token can be given in the `SWITCHBOARD_TOKEN` environment variable.

use switchboard_client::{Client, Config, Event};

#[tokio::main]
async fn main() -> Result<(), switchboard_client::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8000/connection/websocket".to_owned());
    let channel = args.next().unwrap_or_else(|| "news".to_owned());
    let mut config = Config::new(url);
    config.token = std::env::var("SWITCHBOARD_TOKEN").ok();

    let (client, mut events) = Client::connect(config)?;
    client.subscribe(channel).await?;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Publication { channel, offset, data, .. }) => {
                    println!("{channel} #{}: {data}", offset.map_or("-".to_owned(), |o| o.to_string()));
                }
                Some(Event::Subscribed { channel, recovered: false, was_recovering: true, .. }) => {
                    println!("{channel}: publications were missed and could not be recovered; reload");
                }
                Some(other) => println!("{other:?}"),
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => {
                client.close().await?;
            }
        }
    }
}
