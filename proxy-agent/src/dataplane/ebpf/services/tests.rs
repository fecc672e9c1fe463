//! The service programming against in-memory tables: no kernel, no root.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn kept_backends_keep_their_slots() {
    assert_eq!(place(&[1, 2, 3], &[1, 2, 3, 4]), vec![1, 2, 3, 4]);
    assert_eq!(place(&[1, 2, 3], &[3, 1]), vec![1, 3]);
    assert_eq!(place(&[1, 2, 3], &[1, 3, 5]), vec![1, 5, 3]);
}

#[test]
fn removing_the_middle_moves_only_the_tail() {
    assert_eq!(place(&[1, 2, 3, 4, 5], &[1, 2, 4, 5]), vec![1, 2, 5, 4]);
}

#[test]
fn empty_and_full_replacement() {
    assert_eq!(place(&[], &[7, 8]), vec![7, 8]);
    assert_eq!(place(&[1, 2], &[]), Vec::<u32>::new());
    assert_eq!(place(&[1, 2], &[3, 4]), vec![3, 4]);
}

#[test]
fn a_slot_found_missing_is_refilled_in_place() {
    assert_eq!(place(&[1, 0, 3], &[1, 2, 3]), vec![1, 2, 3]);
}
