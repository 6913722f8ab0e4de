# Independent computation of the fleet-lock golden bytes in crates/cmdop-fleet/src/lock/tests.rs and docs/fleet.md:
# postcard written by hand, Ed25519 and HKDF from Python `cryptography` (not from cmdop). Run: python3 lock_golden.py
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import base64, sys
def priv(seed): return Ed25519PrivateKey.from_private_bytes(seed)
def pub(seed): return priv(seed).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
def varint(n):
    out=b''
    while True:
        b=n&0x7f; n>>=7
        if n: out+=bytes([b|0x80])
        else: return out+bytes([b])
def sign(seed,label,msg):
    l=label.encode(); return priv(seed).sign(bytes([len(l)])+l+msg)
A=bytes([0x0a]*32); B=bytes([0x0b]*32); AG=bytes([0x0c]*32); CL=bytes([0x0d]*32); SECRET=bytes([0x0e]*32)
EK=HKDF(algorithm=hashes.SHA256(),length=32,salt=None,info=b"cmdop enrolment-key v1").derive(SECRET)
fleet=bytes([0x11]*16); machine=bytes([0x22]*16)
T=1700000000
out={}
genesis=bytes([1])+fleet+varint(1)+bytes([1])+varint(1)+pub(A)+varint(T)+pub(A)
out['AUTHORITY_GENESIS']=(genesis+sign(A,"cmdop fleet-authority v1",genesis)).hex()
body=bytes([1])+fleet+machine+pub(AG)+varint(5)+b"web-1"+varint(T)+varint(T+86400)
out['MACHINE_ADMIN']=(body+varint(0)+pub(A)+sign(A,"cmdop machine-certificate v1",body)).hex()
auth=bytes([1])+fleet+pub(EK)+varint(T)+varint(T+3600)+varint(3)+varint(31536000)+pub(A)
sauth=auth+sign(A,"cmdop enrolment-authorization v1",auth)
out['ENROLMENT_AUTHORIZATION']=sauth.hex()
out['MACHINE_ENROLLED']=(body+varint(1)+varint(len(sauth))+sauth+sign(EK,"cmdop enrolment-proof v1",body)).hex()
member=bytes([1])+fleet+pub(CL)+bytes([1])+varint(T)+varint(T+2592000)+pub(A)
out['MEMBER']=(member+sign(A,"cmdop member-certificate v1",member)).hex()
rev=bytes([1])+fleet+varint(1)+varint(T)+varint(1)+pub(CL)+pub(A)
out['REVOCATIONS']=(rev+sign(A,"cmdop revocation-list v1",rev)).hex()
out['CREDENTIALS']=(bytes([1])+varint(2)+bytes([0xca,0xfe])+bytes([1])+varint(2)+bytes([0xbe,0xef])).hex()
b32=lambda b: base64.b32encode(b).decode().rstrip('=').lower()
out['ENROLMENT_SECRET']="cmdop_ek_"+b32(pub(A))+"_"+b32(SECRET)
out['ENROLMENT_PUBLIC']=pub(EK).hex()
for k,v in out.items(): print(f"{k}={v}")
