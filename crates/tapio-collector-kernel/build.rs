//! Compiles the kernel collector's BPF object into a libbpf-rs skeleton.

fn main() {
    if let Err(err) = tapio_bpf_build::Skeleton::new("kernel", "src/bpf/kernel.bpf.c").build() {
        panic!(
            "building the kernel collector's BPF object failed: {}",
            err.chain()
        );
    }
}
