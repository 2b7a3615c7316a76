//! Embedding two tapio collectors in your own tool through the `Collector`
//! trait: `cargo run --example embed` (as root: both load BPF).
use tapio::dns::{DnsCollector, DnsConfig};
use tapio::kernel::{KernelCollector, KernelConfig};
use tapio::{Collector, CollectorContext, Registry, RegistryConfig, StartMode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(KernelCollector::new(KernelConfig::default())),
        Box::new(DnsCollector::new(DnsConfig::default())),
    ];
    let mut registry = Registry::new(RegistryConfig {
        start_mode: StartMode::BestEffort, // run what can run, report the rest
        ..Default::default()
    });
    for collector in collectors {
        registry.register(collector)?;
    }
    let mut events = registry.events().ok_or("stream taken")?;
    let report = registry.start(CollectorContext::default()).await?;
    for (name, err) in &report.skipped {
        eprintln!("{name} skipped: {err}");
    }
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(ev) = events.recv() => println!("{} {} {:?}", ev.source, ev.event_type, ev.metadata.get("process.pid")),
            () = &mut deadline => break,
        }
    }
    registry.stop().await;
    Ok(())
}
