//! Types and names shared by the kernel programs (`attestor-ebpf`) and userspace (`attestor`).
#![no_std]
