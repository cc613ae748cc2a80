"""qtd.comm"""
