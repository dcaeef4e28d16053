/**
 * UUIDv7 (RFC 9562), as the Python SDK's `ids.py` makes them: 48-bit Unix
 * milliseconds, version 7, a 12-bit counter (random start in each new ms, +1 within
 * it, so ids made by one page rise strictly), variant 0b10, 62 random bits.  With
 * 4,096 ids in one ms the next ms is borrowed, so the order still holds.
 */

let lastMs = 0;
let counter = 0;

const HEX: string[] = [];
for (let i = 0; i < 256; i++) HEX.push((i + 0x100).toString(16).slice(1));

export function uuidv7(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let ms = Date.now();
  if (ms <= lastMs) {
    ms = lastMs;
    counter = (counter + 1) & 0xfff;
    if (counter === 0) ms += 1;
  } else {
    counter = ((b[6] << 8) | b[7]) & 0x3ff;
  }
  lastMs = ms;
  const high = Math.floor(ms / 0x100000000); // the top 16 of the 48 bits
  const low = ms >>> 0;
  b[0] = (high >>> 8) & 0xff;
  b[1] = high & 0xff;
  b[2] = low >>> 24;
  b[3] = (low >>> 16) & 0xff;
  b[4] = (low >>> 8) & 0xff;
  b[5] = low & 0xff;
  b[6] = 0x70 | (counter >>> 8);
  b[7] = counter & 0xff;
  b[8] = (b[8] & 0x3f) | 0x80;
  let s = "";
  for (let i = 0; i < 16; i++) {
    s += HEX[b[i]];
    if (i === 3 || i === 5 || i === 7 || i === 9) s += "-";
  }
  return s;
}
