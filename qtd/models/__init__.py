"""qtd.models"""
