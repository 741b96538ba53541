"""Modbus meters, sans-I/O: register maps (one module per model) and the word codec.

    from protocols.modbus import load_map, decode_block, encode_values
    regmap = load_map("chint_dtsu666")
    for block in regmap.blocks():           # what to read, in as few requests as possible
        words = client_read(block.function, block.address, block.count)   # the transport's job
        measurements = decode_block(regmap, block, words)

Never imports pymodbus, asyncio or serial: the agent reads with a pymodbus client and this
decoder, the simulator serves the same maps with a pymodbus server.
"""

from protocols.modbus.registers import (
    MAPS,
    Block,
    DataType,
    Register,
    RegisterMap,
    decode_block,
    decode_register,
    encode_register,
    encode_values,
    load_map,
)

__all__ = [
    "MAPS",
    "Block",
    "DataType",
    "Register",
    "RegisterMap",
    "decode_block",
    "decode_register",
    "encode_register",
    "encode_values",
    "load_map",
]
