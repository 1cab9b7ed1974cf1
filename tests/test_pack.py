"""4-bit packing: exact round trip, odd lengths, bitsandbytes' nibble order, and errors that name the bad code."""

import pytest
import torch

from minitransformers.quant.pack import pack_int4, unpack_int4


@pytest.mark.parametrize("shape", [(1,), (7,), (64,), (3, 9), (2, 5, 10)])
def test_round_trip_is_exact(shape):
    codes = torch.randint(0, 16, shape, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], (shape[-1] + 1) // 2)
    assert torch.equal(unpack_int4(packed, shape[-1]), codes)


def test_first_element_is_the_high_nibble_and_an_odd_tail_pads_with_zero():
    codes = torch.randint(0, 16, (5,), dtype=torch.uint8)
    c = codes.tolist()
    expected = [c[0] << 4 | c[1], c[2] << 4 | c[3], c[4] << 4]  # element 2i high, 2i + 1 low, spare nibble 0
    assert pack_int4(codes).tolist() == expected
    assert pack_int4(torch.arange(16, dtype=torch.uint8)).tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]


def test_rows_pack_independently_along_the_last_dim():
    codes = torch.randint(0, 16, (4, 11), dtype=torch.uint8)
    assert torch.equal(pack_int4(codes), torch.stack([pack_int4(row) for row in codes]))


def test_layout_matches_bitsandbytes_nibble_order():
    bnbF = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is not installed; pip install the test extra")
    nf4 = bnbF.get_4bit_type("nf4", device="cpu")  # (16,) sorted, from -1 to 1
    codes = torch.randperm(64) % 16  # (64,) a hand-made block with every code, ±1 among them, so absmax = 1
    packed, state = bnbF.quantize_4bit(nf4[codes], blocksize=64, quant_type="nf4")
    assert state.absmax.item() == 1.0
    assert torch.equal(pack_int4(codes.to(torch.uint8)), packed.flatten())


def test_other_integer_dtypes_are_accepted_in_range():
    codes = torch.randint(0, 16, (2, 6))  # int64
    assert torch.equal(pack_int4(codes), pack_int4(codes.to(torch.uint8)))


def test_code_of_16_or_more_is_refused_naming_the_value():
    codes = torch.randint(0, 16, (3, 8), dtype=torch.uint8)
    codes[1, 5] = 17
    with pytest.raises(ValueError, match=r"found 17 at index \(1, 5\)"):
        pack_int4(codes)


def test_negative_code_is_refused_naming_the_value():
    codes = torch.randint(0, 16, (6,))
    codes[2] = -3
    with pytest.raises(ValueError, match=r"found -3 at index \(2,\)"):
        pack_int4(codes)


def test_float_codes_are_refused():
    with pytest.raises(TypeError, match="integer codes"):
        pack_int4(torch.rand(8) * 15)


def test_unpack_refuses_a_length_that_does_not_match():
    packed = pack_int4(torch.randint(0, 16, (9,), dtype=torch.uint8))  # 5 bytes
    with pytest.raises(ValueError, match="12 codes pack into 6 bytes"):
        unpack_int4(packed, 12)
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(packed.to(torch.int32), 9)
