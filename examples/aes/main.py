"""FunctionBench pyaes: AES-CTR encryption and decryption of a message, in pure Python."""
import pyaes

KEY = b"\xa1\xf6%\x8c\x87}_\xcd\x89dHE8\xbf\xc9,"


def handler(event, context):
    message = event.get("message", "ember" * 20)
    rounds = int(event.get("rounds", 10))
    plain = message.encode()
    for _ in range(rounds):
        cipher = pyaes.AESModeOfOperationCTR(KEY).encrypt(plain)
        plain = pyaes.AESModeOfOperationCTR(KEY).decrypt(cipher)
    return {"ok": plain.decode() == message, "cipher_hex": cipher.hex()[:32]}
