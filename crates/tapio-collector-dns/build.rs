//! Compiles the DNS collector's BPF object into a libbpf-rs skeleton.

fn main() {
    if let Err(err) = tapio_bpf_build::Skeleton::new("dns", "src/bpf/dns.bpf.c").build() {
        panic!(
            "building the dns collector's BPF object failed: {}",
            err.chain()
        );
    }
}
