//! Compiles the etcd collector's BPF object (disk-sync latency) into a
//! libbpf-rs skeleton.

fn main() {
    if let Err(err) = tapio_bpf_build::Skeleton::new("etcd", "src/bpf/etcd.bpf.c").build() {
        panic!(
            "building the etcd collector's BPF object failed: {}",
            err.chain()
        );
    }
}
