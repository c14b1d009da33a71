# -*- coding: utf-8 -*-
# Copyright (c) 2026, hostmesh.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit tests of the nfnetlink messages that delete a created nftables table.

The expected bytes are written out from the kernel's uapi headers, not from the
code under test: struct nlmsghdr (len u32, type u16, flags u16, seq u32, pid
u32, host byte order), struct nfgenmsg (family u8, version u8 = NFNETLINK_V0,
res_id be16), struct nlattr (len u16 without padding, type u16, payload padded
to 4 bytes); NFNL_SUBSYS_NFTABLES = 10, NFT_MSG_DELTABLE = 2, NFT_MSG_NEWCHAIN
= 3, NFT_MSG_GETCHAIN = 4, NFT_MSG_DELCHAIN = 5, NFNL_MSG_BATCH_BEGIN = 0x10,
NFNL_MSG_BATCH_END = 0x11, NFTA_TABLE_NAME = 1, NFTA_CHAIN_TABLE = 1,
NFTA_CHAIN_NAME = 3, NLM_F_REQUEST = 1, NLM_F_ACK = 4, NLM_F_NONREC = 0x100,
NLM_F_DUMP = 0x300, NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10, NLMSG_ERROR = 2,
NLMSG_DONE = 3. Host byte order is little-endian in these literals.
"""

from __future__ import annotations

import errno
import sys

import pytest

from ansible_collections.hostmesh.sidecar.plugins.module_utils import _netfilter as nf

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the literals are little-endian")


def hexfields(*fields):
    return bytes.fromhex(" ".join(fields))


# type 0x0a05 (DELCHAIN), flags 0x105 (REQUEST|ACK|NONREC)
DELCHAIN_OUTPUT_SEQ3 = hexfields(
    "28000000 050a 0501 03000000 00000000",  # nlmsghdr, len 40
    "02 00 0000",                            # nfgenmsg: NFPROTO_IPV4, V0, res_id 0
    "0800 0100 6e617400",                    # NFTA_CHAIN_TABLE "nat\0"
    "0b00 0300 4f555450555400 00")           # NFTA_CHAIN_NAME "OUTPUT\0", len 11, 1 byte padding
DELTABLE_V6_SEQ4 = hexfields(
    "1c000000 020a 0501 04000000 00000000",  # len 28, type 0x0a02 (DELTABLE)
    "0a 00 0000",                            # NFPROTO_IPV6
    "0800 0100 6e617400")                    # NFTA_TABLE_NAME "nat\0"


def begin_or_end(kind, seq):
    # type 0x10/0x11, flags REQUEST, family AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES (be16)
    return bytes.fromhex(f"14000000{kind:02x}000100") + seq.to_bytes(4, "little") + bytes.fromhex("00000000 0000000a")


def ack(seq, error=0, echoed_type=0x0A05):
    """An NLMSG_ERROR message answering request ``seq`` (only its header echoed)."""
    echoed = (16).to_bytes(4, "little") + echoed_type.to_bytes(2, "little") + bytes.fromhex("0501") \
        + seq.to_bytes(4, "little") + bytes(4)
    body = error.to_bytes(4, "little", signed=True) + echoed
    return (16 + len(body)).to_bytes(4, "little") + bytes.fromhex("0200 0001") + seq.to_bytes(4, "little") \
        + bytes.fromhex("39300000") + body


def test_attributes_are_padded_to_four_bytes_and_count_only_their_payload():
    assert nf.nl_string(nf.NFTA_TABLE_NAME, "nat") == bytes.fromhex("08000100") + b"nat\0"
    assert nf.nl_string(nf.NFTA_CHAIN_NAME, "OUTPUT") == bytes.fromhex("0b000300") + b"OUTPUT\0\0"
    assert nf.nl_string(nf.NFTA_CHAIN_NAME, "INPUT") == bytes.fromhex("0a000300") + b"INPUT\0\0\0"
    assert nf.nl_attr(7, b"") == bytes.fromhex("04000700")
    assert [nf.nl_align(n) for n in (0, 1, 4, 5, 11, 12)] == [0, 4, 4, 8, 12, 12]


def test_uapi_constants():
    assert (nf.NFT_MSG_DELTABLE, nf.NFT_MSG_NEWCHAIN, nf.NFT_MSG_GETCHAIN, nf.NFT_MSG_DELCHAIN) == (2, 3, 4, 5)
    assert (nf.NFNL_MSG_BATCH_BEGIN, nf.NFNL_MSG_BATCH_END, nf.NFNL_SUBSYS_NFTABLES) == (16, 17, 10)
    assert (nf.NFTA_TABLE_NAME, nf.NFTA_CHAIN_TABLE, nf.NFTA_CHAIN_NAME) == (1, 1, 3)
    assert nf.NFPROTO == {"ipv4": 2, "ipv6": 10} and nf.NFPROTO_NAME == {2: "ip", 10: "ip6"}
    assert nf.NETLINK_NETFILTER == 12 and nf.NLM_F_NONREC == 0x100


def test_chain_dump_request():
    assert nf.chain_dump_request(10, seq=1) == bytes.fromhex(
        "14000000 040a 0103 01000000 00000000 0a000000")


def test_one_batch_deletes_the_builtin_chains_then_the_table():
    batch, acked = nf.table_deletion_batch(2, "nat", ["PREROUTING", "OUTPUT"], seq=1)
    prerouting = bytes.fromhex("2c000000 050a 0501 02000000 00000000 02000000 08000100") + b"nat\0" \
        + bytes.fromhex("0f000300") + b"PREROUTING\0\0"
    deltable_v4 = bytes.fromhex("1c000000 020a 0501 04000000 00000000 02000000 08000100") + b"nat\0"
    assert batch == (begin_or_end(0x10, 1) + prerouting + DELCHAIN_OUTPUT_SEQ3 + deltable_v4
                     + begin_or_end(0x11, 5))
    assert acked == [2, 3, 4]


def test_a_table_without_chains_is_one_delete_in_a_batch():
    batch, acked = nf.table_deletion_batch(10, "nat", [], seq=3)
    assert batch == begin_or_end(0x10, 3) + DELTABLE_V6_SEQ4 + begin_or_end(0x11, 5)
    assert acked == [4]


def test_parse_acks_reads_the_answered_seq_and_errno_of_each_message():
    stream = ack(2) + ack(3, -errno.EBUSY) + ack(4, 0, echoed_type=0x0A02)
    assert nf.parse_acks(stream) == {2: 0, 3: errno.EBUSY, 4: 0}
    # Other messages in the stream are not answers.
    done = bytes.fromhex("14000000 0300 0200 09000000 00000000 00000000")
    assert nf.parse_acks(done + ack(5)) == {5: 0}


def test_parse_refuses_a_truncated_message():
    with pytest.raises(nf.HostmeshError, match="malformed"):
        nf.parse_acks(ack(2)[:-4])
    with pytest.raises(nf.HostmeshError, match="malformed"):
        nf.parse_acks(bytes.fromhex("24000000 0200 0000 02000000 00000000") + bytes(4))


def chain_message(table, name, extra=b""):
    attrs = nf.nl_string(nf.NFTA_CHAIN_TABLE, table) + bytes.fromhex("0c000200") + bytes(8) \
        + nf.nl_string(nf.NFTA_CHAIN_NAME, name) + extra
    body = bytes.fromhex("02000007") + attrs   # nfgenmsg; res_id carries the ruleset generation
    return (16 + len(body)).to_bytes(4, "little") + bytes.fromhex("030a 0200 01000000 00000000") + body


def test_parse_chain_dump_lists_table_and_chain_until_done():
    hook = bytes.fromhex("1400 0480") + bytes(16)   # NFTA_CHAIN_HOOK, NLA_F_NESTED: skipped
    first = chain_message("nat", "OUTPUT", hook) + chain_message("filter", "INPUT")
    assert nf.parse_chain_dump(first) == ([("nat", "OUTPUT"), ("filter", "INPUT")], False, {})
    done = bytes.fromhex("14000000 0300 0200 01000000 00000000 00000000")
    assert nf.parse_chain_dump(chain_message("nat", "PREROUTING") + done) == ([("nat", "PREROUTING")], True, {})
    refused = ack(1, -errno.EPERM, echoed_type=0x0A04)
    assert nf.parse_chain_dump(refused) == ([], True, {1: errno.EPERM})


@pytest.mark.parametrize("answers, left", [
    ({2: 0, 3: 0}, None),
    ({2: 0, 3: errno.EBUSY}, "it is in use"),                  # a rule in a chain: the whole batch is undone
    ({2: errno.EBUSY, 3: 0, 1: errno.EBUSY}, "it is in use"),
    ({2: errno.ENOENT, 3: 0}, "it changed meanwhile"),
])
def test_deletion_outcome(answers, left):
    outcome = nf.deletion_outcome(answers, 2, "nat")
    assert outcome is None if left is None else outcome.startswith(left)


def test_deletion_outcome_raises_other_errors_with_a_clear_message():
    with pytest.raises(nf.HostmeshError) as err:
        nf.deletion_outcome({2: errno.EPERM, 3: 0}, 10, "nat")
    assert str(err.value) == ("deleting the nftables table ip6 nat failed: EPERM: Operation not permitted "
                              "(deleting an nftables table needs CAP_NET_ADMIN: run as root)")
    with pytest.raises(nf.HostmeshError, match="ip nat failed: EINVAL: Invalid argument$"):
        nf.deletion_outcome({3: errno.EINVAL}, 2, "nat")


def test_netfilter_deletes_through_the_injected_deleter():
    calls = []

    def deleter(nfproto, table):
        calls.append((nfproto, table))
        return "it is in use" if nfproto == 10 else None

    netfilter = nf.Netfilter(nf.config_from_params({}), runner=None, table_deleter=deleter)
    assert netfilter.delete_nft_table("ipv4") is None
    assert netfilter.delete_nft_table("ipv6") == "it is in use"
    assert calls == [(2, "nat"), (10, "nat")]
    assert nf.Netfilter(nf.config_from_params({})).delete_table is nf.delete_nft_table_over_netlink
