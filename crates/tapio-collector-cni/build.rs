//! Compiles the CNI collector's BPF object into a libbpf-rs skeleton.

fn main() {
    if let Err(err) = tapio_bpf_build::Skeleton::new("cni", "src/bpf/cni.bpf.c").build() {
        panic!(
            "building the CNI collector's BPF object failed: {}",
            err.chain()
        );
    }
}
